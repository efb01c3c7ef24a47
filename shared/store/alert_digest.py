"""The alert digest buffer: the alerts kept for each `mode: digest` receiver until its next digest, a
partition per receiver (its key) in the `alertdigest` table, a row per alert (`a-<hash>`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .storage import ALERT_DIGEST_TABLE, Storage, read_time, time_text


@dataclass
class BufferedAlert:
    """An alert waiting for its receiver's digest."""

    receiver_key: str  # the partition (`grouping.receiver_key`)
    row_key: str
    receiver: str
    alert: str  # the alert's JSON
    status: str
    last_seen: datetime
    etag: str | None = field(default=None, repr=False)

    @classmethod
    def _of(cls, row: dict[str, Any]) -> BufferedAlert:
        return cls(
            row["PartitionKey"],
            row["RowKey"],
            str(row.get("receiver", "")),
            str(row["alert"]),
            str(row.get("status", "")),
            read_time(row.get("lastSeen")) or datetime.min,
            row.get("etag"),
        )


class AlertDigestBuffer:
    """The `alertdigest` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def keep(self, alerts: list[BufferedAlert]) -> None:
        """Write alerts into the buffer; an alert seen again replaces its row (and changes its ETag)."""
        await self._storage.merge_rows(
            ALERT_DIGEST_TABLE,
            [
                {
                    "PartitionKey": a.receiver_key,
                    "RowKey": a.row_key,
                    "receiver": a.receiver,
                    "alert": a.alert,
                    "status": a.status,
                    "lastSeen": time_text(a.last_seen),
                }
                for a in alerts
            ],
        )

    async def waiting(self, receiver_key: str) -> list[BufferedAlert]:
        """The alerts waiting for a receiver's digest."""
        return [BufferedAlert._of(row) for row in await self._storage.partition_rows(ALERT_DIGEST_TABLE, receiver_key)]

    async def release(self, receiver_key: str, row_key: str, etag: str | None) -> None:
        """Drop an alert a digest mailed, only if unchanged since it was read (StatusChanged otherwise)."""
        await self._storage.delete_row(ALERT_DIGEST_TABLE, receiver_key, row_key, etag)
