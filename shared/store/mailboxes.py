"""The sending mailboxes' own state: a row per mailbox in the `mailboxes` table (until when its Inbox was
searched for non-delivery reports)."""

from __future__ import annotations

from datetime import UTC, datetime

from .storage import MAILBOXES_TABLE, Storage, read_time, time_text

_ROW = "bounces"


class Mailboxes:
    """The `mailboxes` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def bounces_checked(self, mailbox: str) -> datetime | None:
        """The time up to which the mailbox's Inbox was searched for NDRs; None before the first search."""
        await self._storage.ensure()
        row = await self._storage.get_row(MAILBOXES_TABLE, mailbox.lower(), _ROW)
        return None if row is None else read_time(row.get("checkedUntil"))

    async def note_bounces_checked(self, mailbox: str, until: datetime) -> None:
        row = {
            "PartitionKey": mailbox.lower(),
            "RowKey": _ROW,
            "checkedUntil": time_text(until),
            "updated": time_text(datetime.now(UTC)),
        }
        await self._storage.merge_rows(MAILBOXES_TABLE, [row])
