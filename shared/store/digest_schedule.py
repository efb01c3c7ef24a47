"""Claims of digest occurrences: a row per occurrence in the Table `digestschedule`, inserted (never
overwritten) before the occurrence runs, so that of all instances exactly one runs it (`shared.schedules`
describes the keys). Each digest keeps its newest claims; older ones are pruned as new ones come."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from ..schedules import Due, occurrence_key
from .storage import DIGEST_SCHEDULE_TABLE, StatusChanged, Storage, read_time, time_text

KEPT = 20  # claims kept per digest, for the operator to read


class DigestClaims:
    """The `digestschedule` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def claims(self, key: str) -> list[dict[str, Any]]:
        """The claims of a digest, oldest first, each with its ETag."""
        rows = await self._storage.partition_rows(DIGEST_SCHEDULE_TABLE, key)
        return sorted(rows, key=lambda row: str(row["RowKey"]))

    async def claimed(self, key: str) -> list[str]:
        """The occurrences claimed for a digest (RowKeys, oldest first)."""
        return [str(row["RowKey"]) for row in await self.claims(key)]

    async def take_over(self, key: str, claim: dict[str, Any], instance: str, stale_before: datetime) -> bool:
        """Take over a claim whose run never noted an outcome (its instance died running it) once it is older
        than `stale_before`; False when it is not stale, finished, or another instance took it first."""
        claimed_at = read_time(claim.get("claimedAt"))
        if not claim.get("run") or claim.get("outcome") or claimed_at is None or claimed_at >= stale_before:
            return False
        row = {k: v for k, v in claim.items() if k != "etag"}
        row.update(
            claimedAt=time_text(datetime.now(UTC)), instance=instance, takenOver=int(row.get("takenOver", 0)) + 1
        )
        try:
            await self._storage.replace_row(DIGEST_SCHEDULE_TABLE, row, claim["etag"])
        except StatusChanged:
            return False
        return True

    async def claim(self, key: str, due: Due, instance: str) -> bool:
        """Claim the occurrence `due` names; False when another instance claimed it first."""
        assert due.occurrence is not None
        row = {
            "PartitionKey": key,
            "RowKey": occurrence_key(due.occurrence),
            "run": due.run,
            "reason": due.reason[:1000],
            "claimedAt": time_text(datetime.now(UTC)),
            "instance": instance,
        }
        return await self._storage.insert_row(DIGEST_SCHEDULE_TABLE, row) is not None

    async def note_outcome(self, key: str, occurrence: datetime | str, outcome: str) -> None:
        """What came of a claimed occurrence's run (the occurrence, or its claim's RowKey)."""
        row_key = occurrence if isinstance(occurrence, str) else occurrence_key(occurrence)
        row = {"PartitionKey": key, "RowKey": row_key, "outcome": outcome[:1000]}
        await self._storage.merge_rows(DIGEST_SCHEDULE_TABLE, [row])

    async def prune(self, key: str, claimed: list[str]) -> None:
        """Drop all but the newest KEPT claims of a digest."""
        for row_key in claimed[:-KEPT]:
            with contextlib.suppress(StatusChanged):
                await self._storage.delete_row(DIGEST_SCHEDULE_TABLE, key, row_key)
