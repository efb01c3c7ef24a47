"""The send lease: one delivery's claim on a mail (`sending` until `lease_until`), kept while it works.

A delivery claims a mail by writing its status row `sending` with a lease (conditional on the row's ETag);
from then on every status write of that delivery goes through its `SendLease`, each over the delivery's own
last write only. A background task renews the lease every third of its length for as long as the delivery
runs (a long upload included), and `ensure` checks it before each Graph write (each upload chunk too). When a
write finds the row changed (another delivery took the mail over after the lease ran out, as after a stalled
process), the lease is lost: the delivery stops before its next write, never writes over the newer claim and
never deletes a draft it no longer owns. Only `sent`, Graph's proof that the mail went, is written over a
newer claim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta

from .store import StatusChanged
from .store.mail_status import MailState, MailStatus, MailStatuses

log = logging.getLogger("notifier.lease")


class LeaseLost(Exception):
    """The delivery no longer holds its mail: `taken` when another delivery claimed it (that one has the mail's
    queue message and goes on), else the lease could not be renewed before it ran out (Storage trouble)."""

    def __init__(self, mail_id: str, taken: bool) -> None:
        why = "another delivery took it over" if taken else "its lease could not be renewed in time"
        super().__init__(f"mail {mail_id}: lease lost, {why}")
        self.taken = taken


class SendLease:
    """A delivery's claim on one mail's status row; every status write of the delivery goes through it."""

    def __init__(self, statuses: MailStatuses, status: MailStatus, length: timedelta) -> None:
        self._statuses = statuses
        self._status = status  # the delivery's own row object: a renewal writes it as it stands
        self._length = length
        self._lock = asyncio.Lock()  # the renewal and the delivery's steps write one after the other
        self.lost: LeaseLost | None = None

    async def save(self, status: MailStatus) -> None:
        """Write a step of the delivery, its lease extended, over the delivery's own last write only (LeaseLost
        when another write came between)."""
        async with self._lock:
            await self._write(status)

    async def ensure(self) -> None:
        """Before a Graph write: LeaseLost when the lease is lost; renewed now when less than a third of it is
        left (a renewal that stalled), LeaseLost when that fails."""
        if self.lost is not None:
            raise self.lost
        left = (self._status.lease_until or datetime.min.replace(tzinfo=UTC)) - datetime.now(UTC)
        if left >= self._length / 3:
            return
        try:
            await self.save(self._status)
        except LeaseLost:
            raise
        except Exception as error:
            log.warning("mail %s: lease not renewed (%s)", self._status.id, type(error).__name__)
            self.lost = LeaseLost(self._status.id, taken=False)
            raise self.lost from error

    @property
    def etag(self) -> str | None:
        """The ETag of the delivery's last write: what its outcome may be written over."""
        return self._status.etag

    @asynccontextmanager
    async def renewed(self) -> AsyncIterator[None]:
        """Renew the lease in the background for as long as the block runs (a renewal in flight is let finish:
        a write cut off mid-way would leave the delivery without the ETag it made)."""
        stop = asyncio.Event()
        renewal = asyncio.create_task(self._renew(stop))
        try:
            yield
        finally:
            stop.set()
            await renewal

    async def save_final(self, status: MailStatus) -> bool:
        """Write the delivery's outcome, its lease ended; False when it was not written: the row changed since
        the delivery's last write (another delivery holds the mail, or recorded it done). A `sent` is written
        over a newer claim too (Graph has the mail; the other delivery then finds its next write refused),
        keeping the higher attempt count, but never over another `sent`, `bounced` or `failed`."""
        async with self._lock:
            try:
                await self._statuses.save(status)
                return True
            except StatusChanged:
                pass
            while status.status == MailState.SENT:
                current = await self._statuses.get(status.id)
                if current is None or current.done:
                    return False
                status.attempts, status.etag = max(status.attempts, current.attempts), current.etag
                try:
                    await self._statuses.save(status)
                    return True
                except StatusChanged:
                    continue
            log.warning("mail %s: lease lost; %s not written over the newer claim", status.id, status.status)
            return False

    async def _write(self, status: MailStatus) -> None:
        if self.lost is not None:
            raise self.lost
        status.lease_until = datetime.now(UTC) + self._length
        try:
            await self._statuses.save(status)
        except StatusChanged:
            self.lost = LeaseLost(status.id, taken=True)
            raise self.lost from None

    async def _renew(self, stop: asyncio.Event) -> None:
        """Every third of the lease: extend it; stop once it is lost (the delivery stops at its next write)."""
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._length.total_seconds() / 3)
            if stop.is_set():
                return
            try:
                await self.save(self._status)
            except LeaseLost:
                log.warning("mail %s: lease lost while the delivery ran", self._status.id)
                return
            except Exception as error:  # Storage trouble: try again; `ensure` stops the delivery in time
                log.warning("mail %s: lease renewal failed (%s)", self._status.id, type(error).__name__)
