"""The outbox: `submit_mail` puts a checked mail on `mail-outbox` once (any producer: the API, alert
flushes, digests); the sender takes one message in and sends one mail through Graph, its status kept true.

Semantics (at-least-once queue, exactly-once mail in the normal case):
- a mail already `sent` (a redelivered message) is acknowledged without a Graph call;
- throttling or service trouble beyond the SDK's short retries re-enqueues the message with Graph's
  `Retry-After` as its visibility delay (a new message: no dequeue is spent) and keeps the status `queued`;
- permanent Graph errors (400, 403, 404 ...) fail the mail at once with Graph's code;
- a message that is not a valid mail goes to `mail-outbox-poison` with its reason in the status;
- anything unexpected is raised for the host to redeliver; on the last dequeue (after which the host moves
  the message to `mail-outbox-poison`, where it stays for inspection) the status says why it failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .attachments import resolve_attachments
from .audit import audit
from .bounces import new_message_key, recipient_tags
from .budgets import Verdict
from .config import Settings
from .delivery import (
    SENT_COPY_PENDING,
    DraftDelivery,
    DraftsRefused,
    Modes,
    delivery_modes,
    marked_send_body,
    outcome_unknown,
)
from .errors import AppError, AttachmentChanged, Conflict, GraphError, InvalidMessage, Unavailable
from .lease import LeaseLost, SendLease
from .mail import ID_PATTERN, MailRequest, canonical_id, check_mail, needs_draft, parse_mail, payload_hash
from .pacer import Pacer, Pacing
from .store import StatusChanged, Store
from .store.mail_status import DeliveryMode, MailState, MailStatus
from .text import queue_json

if TYPE_CHECKING:
    from .graph import GraphClient

log = logging.getLogger("notifier.outbox")

MAX_DEQUEUE_COUNT = 5  # host.json extensions.queues.maxDequeueCount
INSTANCE_ID = uuid.uuid4().hex  # this worker process, among the instances sending mail
SHARE_REFRESH_SECONDS = 2.0
SHARE_ALIVE_SECONDS = 10.0
_share_checked = 0.0
_claimed: ContextVar[SendLease | None] = ContextVar("claimed", default=None)  # this delivery's hold on its mail
MAX_ATTEMPTS = 10  # sends tried (throttled ones included) before a mail is given up
RECORD_FIRST_RETRY_SECONDS = 0.5  # recording a sent mail through a Storage outage: first pause, doubling
RECORD_MAX_RETRY_SECONDS = 5.0
RECORD_LEASE_MARGIN_SECONDS = 5.0  # stop trying this long before the lease lets another delivery send it


async def submit_mail(store: Store, mail: MailRequest) -> bool:
    """Record a checked mail (with its id) as `queued` and enqueue it, once: True when that id was already
    submitted with the same content (a replay); a different mail under a used id is a 409.

    The status row and the queue message are written at the same time, so accepting a mail costs one Storage
    round trip of latency, not three. Whatever the outcome, no refused mail stays queued (its message is
    withdrawn) and no accepted mail lacks a message: a replay's own message stays, and the sender
    acknowledges whichever copy comes second without a Graph call.
    """
    assert mail.id is not None
    payload = mail.dump()
    fingerprint = payload_hash(payload)
    row = MailStatus(
        id=mail.id,
        status=MailState.QUEUED,
        payload_hash=fingerprint,
        sender=mail.sender or "",
        recipient_count=len(mail.recipients()),
    )
    created, enqueued = await asyncio.gather(
        store.statuses.create(row), store.outbox.enqueue(mail.id, payload), return_exceptions=True
    )
    if isinstance(enqueued, BaseException):
        log.error("enqueue of mail %s failed: %s", mail.id, type(enqueued).__name__)
        if isinstance(created, MailStatus):
            await store.statuses.delete(mail.id)
        raise Unavailable("The mail could not be queued; nothing was accepted. Try again.")
    if isinstance(created, BaseException):
        log.error("status row of mail %s failed: %s", mail.id, type(created).__name__)
        await store.outbox.withdraw(enqueued)
        raise Unavailable("The mail could not be recorded; nothing was accepted. Try again.")
    if created is not None:
        return False
    existing = await store.statuses.get(mail.id)
    if existing is None or existing.payload_hash != fingerprint:
        await store.outbox.withdraw(enqueued)
        if existing is None:
            raise Unavailable("The mail's status changed while it was read; try again.")
        raise Conflict(f"The id {mail.id!r} was already used for a different mail.")
    return True


class DeliveryOutcome(StrEnum):
    SENT = "sent"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    RETRY_LATER = "retry_later"
    POISONED = "poisoned"
    BUSY = "busy"


_OPERATION = {DeliveryMode.DRAFT: "sendDraft", DeliveryMode.SENDMAIL: "sendMail"}


class SentNotRecorded(Exception):
    """Graph accepted the mail, and Storage refused its `sent` status for as long as the lease allowed."""

    def __init__(self, status: MailStatus) -> None:
        super().__init__(f"mail {status.id} was sent; its status could not be recorded")
        self.status = status


@dataclass(frozen=True)
class Delivery:
    """What became of one outbox message."""

    mail_id: str
    outcome: DeliveryOutcome
    detail: str = ""


def _seconds_until(moment: datetime | None) -> float:
    """Seconds from now until `moment` (none: 0)."""
    return 0.0 if moment is None else max(0.0, (moment - datetime.now(UTC)).total_seconds())


class Sender:
    """Delivers outbox messages; collaborators are passed in so tests use real ones."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        graph: GraphClient,
        *,
        modes: Modes | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.graph = graph
        self.modes = modes or delivery_modes(settings.mail_delivery_mode)
        self.pacer = pacer or Pacer(settings, store)

    async def deliver(self, text: str, message_id: str, dequeue_count: int) -> Delivery:
        """Deliver one outbox message; raises (for the host to redeliver) only on the unexpected."""
        await self._share_mailboxes()
        fallback_id = f"q-{message_id}"  # a mail an outside producer enqueued without an id
        try:
            envelope = queue_json(text, "a mail")
        except InvalidMessage as error:
            return await self._poison(text, fallback_id, error.code, error.message)
        given = envelope.get("id")
        if given is not None and (not isinstance(given, str) or not ID_PATTERN.match(given)):
            reason = f"id {str(given)[:80]!r} is not a valid mail id (1-64 letters, digits or . _ : -)"
            return await self._poison(text, fallback_id, "invalid_message", reason)
        if given is None or given != canonical_id(given):  # copies handed back to the queue (throttled, busy)
            envelope["id"] = canonical_id(given or fallback_id)  # keep the id as it is kept here
            text = json.dumps(envelope, separators=(",", ":"))
        mail_id: str = envelope["id"]
        _claimed.set(None)
        try:
            return await self._deliver(text, envelope, mail_id)
        except Exception as error:
            await self._record_crash(mail_id, error, dequeue_count, _claimed.get())
            raise

    async def _share_mailboxes(self) -> None:
        """Every few seconds: say this instance is sending, and take its share of each mailbox's 4
        concurrent requests among the instances sending now, so together they stay under Outlook's limit."""
        global _share_checked
        if time.monotonic() - _share_checked < SHARE_REFRESH_SECONDS:
            return
        _share_checked = time.monotonic()
        try:
            alive = await self.store.instances.heartbeat(INSTANCE_ID, SHARE_ALIVE_SECONDS)
        except Exception as error:  # Storage trouble: keep the current share; delivery shows the real problem
            log.warning("instance heartbeat failed: %s", type(error).__name__)
            return
        position = alive.index(INSTANCE_ID) if INSTANCE_ID in alive else 0
        await self.graph.share_mailboxes(position, len(alive))

    async def _deliver(self, text: str, envelope: dict[str, Any], mail_id: str) -> Delivery:
        existing = await self.store.statuses.get(mail_id)
        if existing is not None and existing.done:  # a spare copy: its claim-check blob is its own
            await self.store.outbox.delete_payload(envelope)
            return Delivery(mail_id, DeliveryOutcome.DUPLICATE, f"already {existing.status}")
        try:
            payload = await self.store.outbox.resolve_payload(envelope)
        except InvalidMessage as error:
            return await self._poison(text, mail_id, error.code, error.message, existing, None)
        fingerprint = payload_hash(payload)
        if existing is not None and existing.payload_hash and existing.payload_hash != fingerprint:
            return await self._refused_copy(envelope, mail_id)  # before its attachments are looked for
        prefixes = self.settings.mail_queue_blob_prefixes
        try:
            parsed = parse_mail(payload).model_copy(update={"id": mail_id})
            mail = check_mail(await resolve_attachments(self.store, parsed, prefixes), self.settings)
        except AttachmentChanged as error:
            status = existing or await self._status_for(mail_id, parsed, payload)
            if (busy := await self._held_elsewhere(status, text)) is not None:
                return busy
            claim = SendLease(self.store.statuses, status, timedelta(seconds=self.settings.send_lease_seconds))
            sender = status.sender or self.settings.mail_default_sender
            return await self._attachment_changed(parsed, status, text, error, sender, claim)
        except AppError as error:
            return await self._poison(text, mail_id, error.code, error.message, existing, fingerprint)

        status = existing or await self._status_for(mail_id, mail, payload)
        if status.payload_hash and status.payload_hash != fingerprint:
            return await self._refused_copy(envelope, mail_id)
        if status.done:
            return Delivery(mail_id, DeliveryOutcome.DUPLICATE, f"already {status.status}")
        now = datetime.now(UTC)
        lease = timedelta(seconds=self.settings.send_lease_seconds)  # a `sending` claim keeps others off
        if (busy := await self._held_elsewhere(status, text)) is not None:
            return busy
        if status.mode and status.sender:  # Graph may hold it in that mailbox already: a pool may not move it
            mail = mail.model_copy(update={"sender": status.sender, "sender_pool": None})
        if status.status == MailState.SENDING:  # its lease ran out: the delivery holding it died mid-way
            status.outcome_unknown = True  # before pacing, whose hold or deferral saves the status
        if status.mode == DeliveryMode.DRAFT and status.graph_id:  # charged when its draft was begun; it may
            pacing = Pacing(Verdict.ADMIT, status.sender)  # be out already: finish it, uncounted and unheld
        else:
            pacing = await self.pacer.pace(mail, status, text, payload)  # budgets and lanes (shared/pacer.py)
        if pacing.verdict is not Verdict.ADMIT:
            refused = pacing.verdict is Verdict.REFUSE
            return Delivery(mail_id, DeliveryOutcome.FAILED if refused else DeliveryOutcome.RETRY_LATER, pacing.detail)
        status.sender = pacing.mailbox
        status.message_key = status.message_key or new_message_key()  # kept from the first claim on: one Message-ID
        status.recipient_tags = recipient_tags(status.message_key, mail.recipients())
        try:
            status.status, status.attempts, status.lease_until = MailState.SENDING, status.attempts + 1, now + lease
            status = await self.store.statuses.save(status)
        except StatusChanged:
            await self.store.outbox.send_again(text, 5)
            return Delivery(mail_id, DeliveryOutcome.BUSY, "another instance claimed it")
        claim = SendLease(self.store.statuses, status, lease)
        _claimed.set(claim)
        return await self._send(mail, status, text, payload, pacing.mailbox, claim)

    async def _held_elsewhere(self, status: MailStatus, text: str) -> Delivery | None:
        """A mail another delivery holds now (`sending`, its lease running): this copy comes back after it."""
        if status.status != MailState.SENDING or status.lease_until is None:
            return None
        if status.lease_until <= datetime.now(UTC):
            return None
        await self.store.outbox.send_again(text, _seconds_until(status.lease_until) + 1)
        return Delivery(status.id, DeliveryOutcome.BUSY, "another instance is sending it")

    async def _refused_copy(self, envelope: dict[str, Any], mail_id: str) -> Delivery:
        """A copy of another mail under a used id (refused at intake): dropped without a Graph call."""
        await self.store.outbox.delete_payload(envelope)  # the refused copy's own blob, never the owner's
        return Delivery(
            mail_id, DeliveryOutcome.DUPLICATE, "another mail holds this id; this copy was refused at intake"
        )

    async def _status_for(self, mail_id: str, mail: MailRequest, payload: dict[str, Any]) -> MailStatus:
        created = await self.store.statuses.create(
            MailStatus(
                id=mail_id,
                status=MailState.QUEUED,
                payload_hash=payload_hash(payload),
                sender=mail.sender or "",
                recipient_count=len(mail.recipients()),
            )
        )
        return created or await self.store.statuses.get(mail_id) or MailStatus(id=mail_id, status=MailState.QUEUED)

    async def _send(
        self, mail: MailRequest, status: MailStatus, text: str, payload: dict[str, Any], sender: str, claim: SendLease
    ) -> Delivery:
        try:
            async with claim.renewed():  # a long upload keeps the mail claimed
                mode = await self._send_by_mode(mail, status, sender, claim)
        except LeaseLost as lost:
            return self._lease_lost(status, lost)
        except GraphError as error:
            return await self._graph_failed(mail, status, text, payload, error, sender, claim)
        except AttachmentChanged as error:
            return await self._attachment_changed(mail, status, text, error, sender, claim)
        self.modes.used(sender, mode)
        claimed_until = time.monotonic() + _seconds_until(status.lease_until)
        status.status, status.error_code, status.error_message, status.lease_until = MailState.SENT, None, None, None
        status.outcome_unknown = False
        if not await self._record_sent(status, claimed_until, claim):
            return Delivery(status.id, DeliveryOutcome.DUPLICATE, "another delivery recorded it first")
        await self._drop_blobs(mail, text)
        await audit(
            self.store,
            self.settings,
            operation=_OPERATION[mode],
            mailbox=sender,
            outcome="sent",
            caller="mail-outbox",
            correlation_id=status.id,
            recipients=mail.recipients(),
            detail="a retry after an unknown outcome: possibly a duplicate" if status.possible_duplicate else "",
        )
        return Delivery(status.id, DeliveryOutcome.SENT)

    @staticmethod
    def _lease_lost(status: MailStatus, lost: LeaseLost) -> Delivery:
        """Another delivery took the mail over: it holds the mail's queue message and its draft; this one stops
        with nothing written. A lease that could not be renewed goes to the host's redelivery."""
        if not lost.taken:
            raise lost
        log.warning("mail %s: %s; this delivery stops", status.id, lost)
        return Delivery(status.id, DeliveryOutcome.BUSY, "lease lost: another delivery holds the mail")

    async def _send_by_mode(self, mail: MailRequest, status: MailStatus, sender: str, claim: SendLease) -> DeliveryMode:
        """Send the mail by the mailbox's mode (a mail begun as a draft stays one); the mode used."""
        large = needs_draft(mail)
        mode = DeliveryMode.DRAFT if status.mode == DeliveryMode.DRAFT else self.modes.mode(sender, large)
        if mode == DeliveryMode.DRAFT:
            try:
                await self._drafts(claim).deliver(mail, status, sender)
                return mode
            except DraftsRefused as refused:
                if self.modes.setting != "auto" or large:
                    needed = "attachments over 3 MB need" if large else "MAIL_DELIVERY_MODE=draft needs"
                    raise GraphError(
                        403, "drafts_not_permitted", f"{needed} Mail.ReadWrite in {sender}: {refused.error.message}"
                    ) from None
                self.modes.refused(sender, refused.error)
                status.mode = ""
        if large:
            raise GraphError(
                400,
                "draft_required",
                "Attachments over 3 MB need the draft delivery mode (MAIL_DELIVERY_MODE auto or draft, and "
                f"Mail.ReadWrite in {sender}).",
            )
        status.mode = DeliveryMode.SENDMAIL
        if status.outcome_unknown:  # Graph may have taken an earlier attempt: this send may duplicate it
            status.possible_duplicate = True
        body = marked_send_body(mail.model_copy(update={"sender": sender}), status.id, status.message_key)
        await claim.ensure()
        await self.graph.send_mail(sender, body)
        status.sent_at, status.internet_message_id = datetime.now(UTC), body["message"]["internetMessageId"]
        return DeliveryMode.SENDMAIL

    def _drafts(self, claim: SendLease) -> DraftDelivery:
        return DraftDelivery(self.graph, self.store, claim)

    async def _graph_failed(
        self,
        mail: MailRequest,
        status: MailStatus,
        text: str,
        payload: dict[str, Any],
        error: GraphError,
        sender: str,
        claim: SendLease,
    ) -> Delivery:
        status.error_code, status.error_message, status.lease_until = error.code, error.message[:500], None
        status.outcome_unknown = status.outcome_unknown or outcome_unknown(error)
        waiting = error.code == SENT_COPY_PENDING  # not a failure: the draft engine ends that wait itself
        transient = error.transient and (status.attempts < MAX_ATTEMPTS or waiting)
        status.status = MailState.QUEUED if transient else MailState.FAILED
        if not await claim.save_final(status):  # another delivery holds the mail: its outcome is not ours
            return Delivery(status.id, DeliveryOutcome.BUSY, "lease lost: another delivery holds the mail")
        if transient:
            delay = error.retry_after if error.retry_after is not None else min(300, 5 * 2**status.attempts)
            await self.store.outbox.send_again(text, delay)
            outcome, detail = DeliveryOutcome.RETRY_LATER, f"Graph {error.status} {error.code}; again in {delay:.0f} s"
        else:
            if status.mode == DeliveryMode.DRAFT:  # ours alone: the failure above was written over our claim
                await self._drafts(claim).discard(status, sender)
            await self._drop_blobs(mail, text)
            outcome, detail = DeliveryOutcome.FAILED, f"Graph {error.status} {error.code}"
        await audit(
            self.store,
            self.settings,
            operation=_OPERATION.get(DeliveryMode(status.mode or "sendmail"), "sendMail"),
            mailbox=sender,
            outcome=outcome,
            caller="mail-outbox",
            correlation_id=status.id,
            recipients=mail.recipients(),
            detail=detail,
        )
        return Delivery(status.id, outcome, detail)

    async def _attachment_changed(
        self,
        mail: MailRequest,
        status: MailStatus,
        text: str,
        error: AttachmentChanged,
        sender: str,
        claim: SendLease,
    ) -> Delivery:
        """An attachment is not what the app accepted: the mail fails (its draft discarded) rather than send it."""
        status.status, status.error_code, status.error_message = MailState.FAILED, error.code, error.message[:500]
        status.lease_until = None
        if not await claim.save_final(status):  # another delivery holds (or sent) the mail: its outcome is not ours
            return Delivery(status.id, DeliveryOutcome.BUSY, "lease lost: another delivery holds the mail")
        if status.mode == DeliveryMode.DRAFT:
            await self._drafts(claim).discard(status, sender)
        await self._drop_blobs(mail, text)
        log.warning("mail %s failed: %s", status.id, error.message)
        await audit(
            self.store,
            self.settings,
            operation=_OPERATION.get(DeliveryMode(status.mode or "draft"), "sendDraft"),
            mailbox=sender,
            outcome=DeliveryOutcome.FAILED,
            caller="mail-outbox",
            correlation_id=status.id or "",
            recipients=mail.recipients(),
            detail=f"{error.code}: {error.message}",
        )
        return Delivery(status.id, DeliveryOutcome.FAILED, error.code)

    async def _drop_blobs(self, mail: MailRequest, text: str) -> None:
        """A mail is done with: its message's claim-check blob and the attachment blobs the app stored for it go
        (a producer's own blobs stay the producer's; a left-over harms nobody)."""
        try:
            envelope = json.loads(text)
            await asyncio.gather(self.store.outbox.delete_payload(envelope), self.store.attachments.delete_for(mail))
        except Exception as error:
            log.warning("blobs of mail %s not deleted: %s", mail.id, type(error).__name__)

    async def _record_sent(self, status: MailStatus, claimed_until: float, claim: SendLease) -> bool:
        """Graph has the mail: record that, trying through a Storage outage for as long as our lease keeps
        other deliveries of it waiting, so that no retry can send it again while Storage is down. False when
        another delivery recorded the mail done first."""
        delay = RECORD_FIRST_RETRY_SECONDS
        while True:
            try:
                return await claim.save_final(status)
            except Exception as error:
                if time.monotonic() + delay > claimed_until - RECORD_LEASE_MARGIN_SECONDS:
                    log.error("mail %s was sent but its status could not be recorded: %s", status.id, error)
                    raise SentNotRecorded(status) from error
                log.warning("mail %s sent; recording it failed (%s), again in %.1f s", status.id, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECORD_MAX_RETRY_SECONDS)

    async def _record_crash(self, mail_id: str, error: Exception, dequeue_count: int, claim: SendLease | None) -> None:
        """Hand the mail back for the host's redelivery; on the last dequeue, record why it failed. A delivery
        that crashed before claiming the mail leaves another's `sending` claim alone while its lease runs; one
        that held it writes only over its own claim."""
        last = dequeue_count >= MAX_DEQUEUE_COUNT
        reason = f"{type(error).__name__} on delivery attempt {dequeue_count}"
        if last:
            reason += f"; moved to mail-outbox-poison after {dequeue_count} attempts"
        try:
            if isinstance(error, SentNotRecorded) and claim is not None:  # Graph has it: one more try to say so
                await claim.save_final(error.status)
                return
            status = await self.store.statuses.get(mail_id) or MailStatus(id=mail_id, status=MailState.QUEUED)
            if status.status == MailState.SENT:
                return
            lease = status.lease_until if status.status == MailState.SENDING else None
            if claim is None and lease is not None and lease > datetime.now(UTC):
                log.warning("mail %s: %s before its claim; another delivery holds it", mail_id, reason)
                return
            if claim is not None and claim.lost is not None and claim.lost.taken:
                return  # another delivery holds the mail now
            status.status = MailState.FAILED if last else MailState.QUEUED
            status.error_code, status.error_message, status.lease_until = "delivery_crashed", reason, None
            status.outcome_unknown = True
            if claim is not None:  # over our own last write only, never over another delivery's claim
                status.etag = claim.etag
                await claim.save_final(status)
                return
            try:
                await self.store.statuses.save(status)  # over the row as just read
            except StatusChanged:
                log.warning("mail %s: %s; another delivery claimed it meanwhile", mail_id, reason)
        except Exception:
            log.exception("could not record the failure of mail %s", mail_id)

    async def _poison(
        self,
        text: str,
        mail_id: str,
        code: str,
        reason: str,
        existing: MailStatus | None = None,
        fingerprint: str | None = None,
    ) -> Delivery:
        """A message that can never be sent: its reason in the status, then one copy in the poison queue (a
        crash between the two leaves the status right and the message to come again). A status row that
        belongs to another mail under the same id (this copy's content is known and differs) is left alone; a
        copy whose claim-check blob is gone is taken for the owner's (a refused copy's blob is never deleted
        under it, see `withdraw`)."""
        status = existing if existing is not None else await self.store.statuses.get(mail_id)
        owned_by_another = (
            status is not None
            and bool(status.payload_hash)
            and fingerprint is not None
            and fingerprint != status.payload_hash
        )
        if status is None:
            status = MailStatus(id=mail_id, status=MailState.FAILED)
        if status.status != MailState.SENT and not owned_by_another:
            status.status, status.error_code, status.error_message = MailState.FAILED, code, reason[:500]
            status.etag = None
            await self.store.statuses.save(status)
        await self.store.outbox.poison(text)
        log.warning("mail %s poisoned: %s", mail_id, reason)
        return Delivery(mail_id, DeliveryOutcome.POISONED, reason)
