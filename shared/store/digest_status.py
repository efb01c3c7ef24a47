"""Mailbox digests' status: a row per digest in the `digeststatus` table (when it last ran, which is the next
run's `since`, and what came of it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .storage import DIGEST_STATUS_TABLE, Storage, read_time, time_text

_ROW = "status"


@dataclass(frozen=True)
class DigestStatus:
    """What a digest's status row says; fields a run did not write keep what was there."""

    last_run: datetime | None = None
    last_outcome: str = ""
    last_messages: int = 0
    last_mail: str = ""
    last_error: str = ""
    updated: datetime | None = None


class DigestStatuses:
    """The `digeststatus` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def get(self, digest: str) -> DigestStatus:
        """A digest's status; an empty one before its first run."""
        row = await self._storage.get_row(DIGEST_STATUS_TABLE, digest, _ROW)
        if row is None:
            return DigestStatus()
        return DigestStatus(
            last_run=read_time(row.get("lastRun")),
            last_outcome=str(row.get("lastOutcome", "")),
            last_messages=int(row.get("lastMessages", 0)),
            last_mail=str(row.get("lastMail", "")),
            last_error=str(row.get("lastError", "")),
            updated=read_time(row.get("updated")),
        )

    async def note_run(self, digest: str, outcome: str, messages: int, mail_id: str, ran: datetime | None) -> None:
        """A finished run: its outcome, and (`ran`) the time the next run reads from."""
        row: dict[str, Any] = {
            "PartitionKey": digest,
            "RowKey": _ROW,
            "lastOutcome": outcome,
            "lastMessages": messages,
            "lastMail": mail_id,
            "lastError": "",
            "updated": time_text(datetime.now(UTC)),
        }
        if ran is not None:
            row["lastRun"] = time_text(ran)
        await self._storage.merge_rows(DIGEST_STATUS_TABLE, [row])

    async def note_failure(self, digest: str, error: str) -> None:
        """A failed run: its error; the time the next run reads from stays."""
        row = {
            "PartitionKey": digest,
            "RowKey": _ROW,
            "lastOutcome": "failed",
            "lastError": error[:500],
            "updated": time_text(datetime.now(UTC)),
        }
        await self._storage.merge_rows(DIGEST_STATUS_TABLE, [row])
