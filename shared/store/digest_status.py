"""Mailbox digests' status: a row per digest in the `digeststatus` table (when it last ran, which is the next
run's `since`, and what came of it), and beside it the digest's run claim: the row `running`, inserted by the
run that holds the digest and deleted when it ends, so that of concurrent runs (the timer and manual runs, on
any instance) one reads and reports at a time. A claim expires after RUN_LEASE, so a run that died frees the
digest; a live run extends its claim before it records what it will report."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from .storage import DIGEST_STATUS_TABLE, StatusChanged, Storage, read_time, time_text

_ROW = "status"
_RUNNING = "running"
RUN_LEASE = timedelta(minutes=10)  # longer than a run (tagging waits at most 3 min), shorter than a stale claim


@dataclass
class RunClaim:
    """A run's hold on its digest: the claim row's ETag and when the claim expires (renewed in place)."""

    digest: str
    run: str
    etag: str
    expires: datetime


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

    async def claim_run(self, digest: str, run: str) -> RunClaim | None:
        """Claim the digest for a run; None while another run's claim is live (an expired one is taken over)."""
        claim = RunClaim(digest, run, "", datetime.now(UTC) + RUN_LEASE)
        etag = await self._storage.insert_row(DIGEST_STATUS_TABLE, _claim_row(claim))
        if etag is None:
            held = await self._storage.get_row(DIGEST_STATUS_TABLE, digest, _RUNNING)
            if held is None:  # released meanwhile: one more try, which another run may win
                etag = await self._storage.insert_row(DIGEST_STATUS_TABLE, _claim_row(claim))
            elif (read_time(held.get("expires")) or claim.expires) <= datetime.now(UTC):
                # the run that held it died: take it over, unless another run does first
                with contextlib.suppress(StatusChanged):
                    etag = await self._storage.replace_row(DIGEST_STATUS_TABLE, _claim_row(claim), held["etag"])
        return replace(claim, etag=etag) if etag else None

    async def extend_run(self, claim: RunClaim) -> bool:
        """Renew the claim for another RUN_LEASE; False when it expired and another run took it over."""
        renewed = replace(claim, expires=datetime.now(UTC) + RUN_LEASE)
        try:
            claim.etag = await self._storage.replace_row(DIGEST_STATUS_TABLE, _claim_row(renewed), claim.etag)
        except StatusChanged:
            return False
        claim.expires = renewed.expires
        return True

    async def release_run(self, claim: RunClaim) -> None:
        """End a run's claim (one that another run took over stays with it)."""
        with contextlib.suppress(StatusChanged):
            await self._storage.delete_row(DIGEST_STATUS_TABLE, claim.digest, _RUNNING, claim.etag)


def _claim_row(claim: RunClaim) -> dict[str, Any]:
    return {
        "PartitionKey": claim.digest,
        "RowKey": _RUNNING,
        "run": claim.run,
        "expires": time_text(claim.expires, micro=True),
    }
