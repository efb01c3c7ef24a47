"""Receivers' mail caps, in the `alertgroups` table: a `cap` row per receiver (partition `cap-<receiver>`: the
current window, the notices mailed in it, the due time of the pending summary) and a row per held-back
notice (partition `overflow-<receiver>`). The `cap` row is guarded by its ETag."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .storage import ALERT_GROUPS_TABLE, Storage, read_time, time_text

CAP_ROW = "cap"


@dataclass
class CapRow:
    """A receiver's count of notices in the current `group_interval` window, and its pending summary."""

    receiver: str  # the receiver's key (`grouping.receiver_key`)
    window: datetime | None = None  # the start of the window counted
    mailed: int = 0
    summary_due: datetime | None = None
    etag: str | None = field(default=None, repr=False)

    def _entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": f"cap-{self.receiver}",
            "RowKey": CAP_ROW,
            "window": time_text(self.window),
            "mailed": self.mailed,
            "summary_due": time_text(self.summary_due),
        }


@dataclass(frozen=True)
class HeldBack:
    """One group notice that went into the summary instead of its own mail."""

    group: str
    subject: str
    status: str
    alerts: int
    at: datetime
    notice: str = ""  # the held row's key (its time and notice id)


class MailCaps:
    """The `cap-` and `overflow-` partitions of the `alertgroups` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def get(self, receiver: str) -> CapRow | None:
        row = await self._storage.get_row(ALERT_GROUPS_TABLE, f"cap-{receiver}", CAP_ROW)
        if row is None:
            return None
        return CapRow(
            receiver,
            read_time(row.get("window")),
            int(row.get("mailed", 0)),
            read_time(row.get("summary_due")),
            row.get("etag"),
        )

    async def insert(self, cap: CapRow) -> bool:
        """Insert a receiver's first cap row; False when one exists already."""
        cap.etag = await self._storage.insert_row(ALERT_GROUPS_TABLE, cap._entity())
        return cap.etag is not None

    async def replace(self, cap: CapRow) -> None:
        """Write a cap row back, only if unchanged since it was read; StatusChanged otherwise."""
        cap.etag = await self._storage.replace_row(ALERT_GROUPS_TABLE, cap._entity(), cap.etag)

    async def hold(self, receiver: str, notice_id: str, held: HeldBack) -> None:
        """Keep a notice for the receiver's next summary (repeatable: the row is keyed by time and notice)."""
        row_key = f"{time_text(held.at)}-{notice_id}".replace(":", "")
        await self._storage.merge_rows(
            ALERT_GROUPS_TABLE,
            [
                {
                    "PartitionKey": f"overflow-{receiver}",
                    "RowKey": row_key,
                    "group": held.group,
                    "subject": held.subject,
                    "status": held.status,
                    "alerts": held.alerts,
                    "at": time_text(held.at),
                }
            ],
        )

    async def held(self, receiver: str) -> list[HeldBack]:
        """The notices held back for the receiver's next summary."""
        rows = await self._storage.partition_rows(ALERT_GROUPS_TABLE, f"overflow-{receiver}")
        return [
            HeldBack(r["group"], r["subject"], r["status"], int(r["alerts"]), _time(r["at"]), r["RowKey"]) for r in rows
        ]

    async def release(self, receiver: str, notice: str) -> None:
        """Forget a held-back notice (its summary is submitted); gone is fine."""
        await self._storage.delete_row(ALERT_GROUPS_TABLE, f"overflow-{receiver}", notice)


def _time(text: str) -> datetime:
    moment = read_time(text)
    if moment is None:
        raise ValueError("a held-back notice without its time")
    return moment
