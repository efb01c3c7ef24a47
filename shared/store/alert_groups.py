"""Alert groups: one partition per group in the `alertgroups` table, a `group` row (receiver, labels, the due
time of its one live flush, the last notice) and a row per alert (`a-<hash>`: the alert, its status, the
status it was last announced with). Group rows are guarded by ETags; every write can be repeated."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .storage import ALERT_GROUPS_TABLE, Storage, read_time, time_text

GROUP_ROW = "group"


@dataclass
class GroupRow:
    """A group's own row."""

    key: str
    receiver: str
    labels: dict[str, str]
    scheduled_for: datetime | None  # the due time of the group's live flush; None: none pending
    last_flush: datetime | None = None
    last_notice: datetime | None = None
    seq: int = 0  # notices decided so far
    epoch: str = ""  # mail ids stay unique if a group's rows are ever lost
    etag: str | None = field(default=None, repr=False)

    def _entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": self.key,
            "RowKey": GROUP_ROW,
            "receiver": self.receiver,
            "labels": json.dumps(self.labels),
            "scheduled_for": time_text(self.scheduled_for),
            "last_flush": time_text(self.last_flush),
            "last_notice": time_text(self.last_notice),
            "seq": self.seq,
            "epoch": self.epoch,
        }

    @classmethod
    def _of(cls, row: dict[str, Any]) -> GroupRow:
        return cls(
            key=row["PartitionKey"],
            receiver=str(row.get("receiver", "")),
            labels=json.loads(row.get("labels") or "{}"),
            scheduled_for=read_time(row.get("scheduled_for")),
            last_flush=read_time(row.get("last_flush")),
            last_notice=read_time(row.get("last_notice")),
            seq=int(row.get("seq", 0)),
            epoch=str(row.get("epoch", "")),
            etag=row.get("etag"),
        )


@dataclass
class AlertRow:
    """One alert of a group, as the group holds it."""

    group: str
    row_key: str
    alert: str  # the alert's JSON
    status: str
    updated: datetime | None = None
    notified: str | None = None  # the status it was last announced with
    etag: str | None = field(default=None, repr=False)

    @classmethod
    def _of(cls, row: dict[str, Any]) -> AlertRow:
        return cls(
            group=row["PartitionKey"],
            row_key=row["RowKey"],
            alert=str(row.get("alert", "")),
            status=str(row.get("status", "")),
            updated=read_time(row.get("updated")),
            notified=row.get("notified"),
            etag=row.get("etag"),
        )


class AlertGroups:
    """The groups' partitions of the `alertgroups` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def get(self, key: str) -> GroupRow | None:
        row = await self._storage.get_row(ALERT_GROUPS_TABLE, key, GROUP_ROW)
        return None if row is None else GroupRow._of(row)

    async def insert(self, group: GroupRow) -> bool:
        """Insert a new group row; False when the group exists already."""
        etag = await self._storage.insert_row(ALERT_GROUPS_TABLE, group._entity())
        group.etag = etag
        return etag is not None

    async def replace(self, group: GroupRow) -> None:
        """Write a group row back, only if unchanged since it was read; StatusChanged otherwise."""
        group.etag = await self._storage.replace_row(ALERT_GROUPS_TABLE, group._entity(), group.etag)

    async def delete(self, group: GroupRow) -> None:
        """Delete a group row, only if unchanged since it was read; StatusChanged otherwise."""
        await self._storage.delete_row(ALERT_GROUPS_TABLE, group.key, GROUP_ROW, group.etag)

    async def alerts(self, key: str) -> list[AlertRow]:
        """The alerts a group holds now."""
        rows = await self._storage.partition_rows(ALERT_GROUPS_TABLE, key)
        return [AlertRow._of(row) for row in rows if row["RowKey"] != GROUP_ROW]

    async def write_alerts(self, rows: list[AlertRow]) -> None:
        """Write alerts into their groups, keeping what each row says was announced."""
        await self._storage.merge_rows(
            ALERT_GROUPS_TABLE,
            [
                {
                    "PartitionKey": row.group,
                    "RowKey": row.row_key,
                    "alert": row.alert,
                    "status": row.status,
                    "updated": time_text(row.updated),
                }
                for row in rows
            ],
        )

    async def mark_notified(self, key: str, statuses: dict[str, str]) -> None:
        """Record the status each alert (by row key) was announced with."""
        await self._storage.merge_rows(
            ALERT_GROUPS_TABLE,
            [{"PartitionKey": key, "RowKey": row_key, "notified": status} for row_key, status in statuses.items()],
        )

    async def delete_alert(self, row: AlertRow, *, if_unchanged: bool = True) -> None:
        """Delete an alert's row (only if unchanged since it was read, unless told otherwise: StatusChanged)."""
        etag = row.etag if if_unchanged else None
        await self._storage.delete_row(ALERT_GROUPS_TABLE, row.group, row.row_key, etag)
