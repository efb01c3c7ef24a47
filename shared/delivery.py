"""The draft mode of delivery: a mail sent in steps the app can check, so that it goes out exactly once.

1. create a draft marked with the mail's id (`DELIVERY_ID_PROPERTY`), with immutable ids, and record its id;
2. add the attachments that did not fit in the draft's own request (each recorded once it is there);
3. send the draft.

A step whose outcome is unknown (a 5xx or a dropped connection after Graph may have done it, a crash, a
redelivered message) is never simply repeated: the next attempt first finds out where the mail stands (the
draft by its recorded id; by its marker when the id was never recorded; not a draft any more = sent; an
attachment by its name on the draft; an upload by its session's `nextExpectedRanges`) and goes on from there.
So there are never two drafts of a mail, and never two sends. Each step is taken only while the delivery holds
its lease (`shared.lease`: checked before every Graph write, each upload chunk included, and renewed in the
background meanwhile). `Modes` says which mailboxes use this mode.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .bounces import message_id_for
from .config import DELIVERY_MODES
from .errors import GraphError
from .mail import (
    GRAPH_REQUEST_BYTES,
    REQUEST_HEADROOM_BYTES,
    Attachment,
    MailRequest,
    body_request_bytes,
    graph_send_body,
)
from .store.mail_status import DeliveryMode, MailStatus

if TYPE_CHECKING:
    from .graph import ByteSource, GraphClient, MessageState
    from .lease import SendLease
    from .store import Store

log = logging.getLogger("notifier.delivery")

INLINE_DRAFT_BYTES = 3 * 1024 * 1024  # attachments carried in the draft's own request, together
INLINE_ATTACHMENT_BYTES = 3 * 1024 * 1024  # one attachment added by a plain POST; larger ones are uploaded
VANISHED_GRACE = timedelta(minutes=10)  # a recorded draft missing this long, with no sent copy: it was deleted
SENT_COPY_WAIT = 30.0  # seconds between looks for a sent copy that Sent Items does not show yet
DRAFT_RECHECK_SECONDS = 3600.0  # a mailbox that refused drafts is tried again after this long
SENT_COPY_PENDING = "sent_copy_pending"  # the code of a wait for Sent Items to show a sent mail

Reader = Callable[[str], "ByteSource"]  # a blob attachment's bytes, by blob name


class DraftsRefused(Exception):
    """Graph refused to create a draft in the mailbox (403): the app lacks Mail.ReadWrite there."""

    def __init__(self, mailbox: str, error: GraphError) -> None:
        super().__init__(f"drafts refused in {mailbox}: {error.code}")
        self.mailbox = mailbox
        self.error = error


def outcome_unknown(error: GraphError) -> bool:
    """Graph may have done what was asked: a 5xx or no answer (a 429 is answered before anything is done)."""
    return error.transient and error.status != 429


@dataclass(frozen=True)
class _Extra:
    """An attachment added to the draft after it was created: its index in the mail, and how."""

    index: int
    attachment: Attachment
    upload: bool  # through an upload session (over 3 MB), else one POST


def split_attachments(mail: MailRequest) -> tuple[list[int], list[_Extra]]:
    """Which attachments ride in the draft's own request (inline ones, in order, while they fit together in
    3 MB and the request, body included, in Graph's 4 MB) and which are added afterwards: by a POST of their
    own when that request fits, else through an upload session. Depends on the mail alone, so every attempt
    splits it alike."""
    carried: list[int] = []
    extras: list[_Extra] = []
    room = INLINE_DRAFT_BYTES
    request_room = GRAPH_REQUEST_BYTES - REQUEST_HEADROOM_BYTES - body_request_bytes(mail)
    for index, attachment in enumerate(mail.attachments):
        size = attachment.byte_size()
        encoded = attachment.request_bytes()
        if attachment.blob is None and size <= room and encoded <= request_room and not extras:
            carried.append(index)
            room, request_room = room - size, request_room - encoded
        else:
            alone = encoded + REQUEST_HEADROOM_BYTES > GRAPH_REQUEST_BYTES
            extras.append(_Extra(index, attachment, size > INLINE_ATTACHMENT_BYTES or alone))
    return carried, extras


class DraftDelivery:
    """Sends one mail through a marked draft; its status records each step (see the module's text)."""

    def __init__(self, graph: GraphClient, store: Store, lease: SendLease) -> None:
        self.graph = graph
        self.store = store
        self._lease = lease

    async def deliver(self, mail: MailRequest, status: MailStatus, mailbox: str) -> None:
        """Returns once the mail is sent (its status says so, not yet saved); raises GraphError when a step
        failed (its draft kept for the next attempt) and DraftsRefused when the mailbox allows no drafts."""
        status.mode = DeliveryMode.DRAFT
        current = await self._where(status, mailbox)
        if current is None:
            current = await self._create(mail, status, mailbox)
        if current.is_draft:
            await self._attach(mail, status, mailbox)
            current = await self._send(status, mailbox)
        _record_sent(status, current)

    async def discard(self, status: MailStatus, mailbox: str) -> None:
        """Delete the draft of a mail that failed for good, so it does not linger in Drafts; only while it is
        a draft: an immutable id names the sent copy too, and that is the mailbox's record of the send."""
        from .graph import MessageGone

        if not status.graph_id:
            return
        try:
            state = await self.graph.get_message(mailbox, status.graph_id)
            if isinstance(state, MessageGone) or not state.is_draft:
                return
            await self.graph.delete_message(mailbox, status.graph_id)
        except GraphError as error:
            log.warning("draft of mail %s not deleted: %s", status.id, error.code)

    # -- where the mail stands ---------------------------------------------------------------------------
    async def _where(self, status: MailStatus, mailbox: str) -> MessageState | None:
        """The mail's message when one exists (a draft, or sent), None when no draft was ever created."""
        from .graph import MessageGone

        if status.graph_id:
            state = await self.graph.get_message(mailbox, status.graph_id)
            return await self._vanished(status, mailbox) if isinstance(state, MessageGone) else state
        if status.attempts > 1 or status.outcome_unknown:  # an earlier attempt may have created it
            return await self._marked(status, mailbox)
        return None

    async def _marked(self, status: MailStatus, mailbox: str) -> MessageState | None:
        """The message carrying this mail's marker (a sent one before a draft), recorded; None if none. A
        mailbox the app may not read (403) is one it may not draft in either: no draft of ours can be there."""
        try:
            found = await self.graph.find_marked(mailbox, status.id)
        except GraphError as error:
            if error.status == 403:
                raise DraftsRefused(mailbox, error) from None
            raise
        if not found:
            return None
        state = min(found, key=lambda m: m.is_draft)
        status.graph_id = state.id
        status.internet_message_id = state.internet_message_id or status.internet_message_id
        status.drafted_at = status.drafted_at or datetime.now(UTC)
        await self._record(status)
        return state

    async def _vanished(self, status: MailStatus, mailbox: str) -> MessageState:
        """The recorded message is not there: sent, with Sent Items not showing the copy yet (Microsoft warns
        of the lag), or the draft was deleted before its send. The marker tells, once the copy shows."""
        found = await self.graph.find_marked(mailbox, status.id)
        if found:
            return min(found, key=lambda m: m.is_draft)
        if status.drafted_at is not None and datetime.now(UTC) - status.drafted_at > VANISHED_GRACE:
            raise GraphError(
                404,
                "draft_vanished",
                f"The mail's draft is gone and no sent copy appeared within {VANISHED_GRACE.seconds // 60} minutes "
                "(deleted in the mailbox before it was sent?).",
            )
        raise GraphError(503, SENT_COPY_PENDING, "The mail is not visible in the mailbox yet.", SENT_COPY_WAIT)

    # -- the steps -----------------------------------------------------------------------------------------
    async def _create(self, mail: MailRequest, status: MailStatus, mailbox: str) -> MessageState:
        from .graph import MessageState

        carried, _ = split_attachments(mail)
        message = graph_send_body(mail.model_copy(update={"attachments": [mail.attachments[i] for i in carried]}))
        message["message"]["internetMessageId"] = message_id_for(status.id, mailbox, status.message_key)
        await self._lease.ensure()
        try:
            draft = await self.graph.create_draft(mailbox, message["message"], status.id)
        except GraphError as error:
            if error.status == 403:
                raise DraftsRefused(mailbox, error) from None
            if not outcome_unknown(error):
                raise
            found = await self._marked(status, mailbox)  # did Graph create it after all?
            if found is None:
                raise
            return found
        status.graph_id, status.internet_message_id = draft.id, draft.internet_message_id or ""
        status.drafted_at = datetime.now(UTC)
        await self._record(status)
        return MessageState(draft.id, True, draft.internet_message_id, None, None)

    async def _attach(self, mail: MailRequest, status: MailStatus, mailbox: str) -> None:
        """Add the attachments the draft's own request could not carry, each once."""
        carried, extras = split_attachments(mail)
        uploads: dict[str, dict[str, Any]] = json.loads(status.uploads or "{}")
        pending = [e for e in extras if not uploads.get(str(e.index), {}).get("done")]
        if not pending:
            return
        unsure = status.attempts > 1 or status.outcome_unknown or bool(uploads)
        present = await self.graph.list_attachments(mailbox, status.graph_id) if unsure else []
        attached = [mail.attachments[i].name for i in carried]
        attached += [e.attachment.name for e in extras if uploads.get(str(e.index), {}).get("done")]
        for extra in pending:
            name = extra.attachment.name
            entry = uploads.setdefault(str(extra.index), {})
            if present.count(name) <= attached.count(name):  # not (yet) on the draft
                if extra.upload:
                    await self._upload(status, mailbox, extra, entry, uploads, present, attached)
                else:
                    await self._post(status, mailbox, extra, attached.count(name) + 1)
            entry.pop("url", None)  # done with: a finished session's URL is no use to anyone
            entry["done"] = True
            attached.append(name)
            status.uploads = json.dumps(uploads, separators=(",", ":"))
            await self._record(status)

    async def _post(self, status: MailStatus, mailbox: str, extra: _Extra, expected: int) -> None:
        """One attachment by POST; after an unknown outcome, it counts as there when the draft has `expected`
        attachments of its name (two may share one)."""
        attachment = extra.attachment
        content = attachment.content_base64
        if attachment.blob is not None:
            read = self._reader(attachment)
            assert callable(read)
            content = base64.b64encode(await read(0, attachment.byte_size())).decode()
        fields = attachment.model_dump(by_alias=True, exclude={"blob", "size", "sha256"}, exclude_none=True)
        inline = Attachment.model_validate({**fields, "contentBase64": content})  # a blob's bytes read in
        body = graph_send_body(MailRequest(attachments=[inline]))
        item = body["message"]["attachments"][0]
        await self._lease.ensure()
        try:
            await self.graph.add_attachment(mailbox, status.graph_id, item)
        except GraphError as error:
            if not outcome_unknown(error):
                raise
            names = await self.graph.list_attachments(mailbox, status.graph_id)
            if names.count(attachment.name) < expected:
                raise

    async def _upload(
        self,
        status: MailStatus,
        mailbox: str,
        extra: _Extra,
        entry: dict[str, Any],
        uploads: dict[str, dict[str, Any]],
        present: list[str],
        attached: list[str],
    ) -> None:
        """An attachment over 3 MB through an upload session, resumed where its session stands."""
        attachment, size = extra.attachment, extra.attachment.byte_size()
        start: int | None = None
        if entry.get("url"):
            start = await self.graph.upload_position(mailbox, entry["url"])
            if start is None:  # the session is gone: finished (its answer lost) or expired
                if present.count(attachment.name) > attached.count(attachment.name):
                    return
                entry.pop("url")
        if not entry.get("url"):
            await self._lease.ensure()
            session = await self.graph.create_upload_session(
                mailbox,
                status.graph_id,
                attachment.name,
                size,
                content_type=attachment.content_type,
                is_inline=attachment.inline,
                content_id=attachment.content_id,
            )
            entry["url"], start = session.url, session.next_offset
            status.uploads = json.dumps(uploads, separators=(",", ":"))
            await self._record(status)  # a crash from here on resumes this session
        await self.graph.upload_attachment(mailbox, entry["url"], size, self._reader(attachment), start=start)

    async def _send(self, status: MailStatus, mailbox: str) -> MessageState:
        from .graph import MessageGone, MessageState

        await self._lease.ensure()
        try:
            await self.graph.send_draft(mailbox, status.graph_id)
        except GraphError as error:
            if not outcome_unknown(error):
                raise
            state = await self.graph.get_message(mailbox, status.graph_id)
            if isinstance(state, MessageState) and state.is_draft:
                raise  # not sent: the next attempt sends it
            if isinstance(state, MessageGone):  # right after our own send: the Sent Items copy lags
                return MessageState(status.graph_id, False, status.internet_message_id or None, None, None)
            return state
        return MessageState(status.graph_id, False, status.internet_message_id or None, None, None)

    # -- helpers -----------------------------------------------------------------------------------------
    def _reader(self, attachment: Attachment) -> ByteSource:
        """The attachment's bytes by range, each read (an upload's next chunk) only while the lease is held; a
        blob is read only as it was accepted: its size and SHA-256 are checked on the way."""
        blob = (
            self.store.attachments.reader(attachment.blob, attachment.byte_size(), attachment.sha256)
            if attachment.blob is not None
            else None
        )
        content = base64.b64decode(attachment.content_base64 or "") if blob is None else b""

        async def read(start: int, length: int) -> bytes:
            await self._lease.ensure()
            if blob is not None:
                assert callable(blob)
                return await blob(start, length)
            return content[start : start + length]

        return read

    async def _record(self, status: MailStatus) -> None:
        """Save a step through the lease (extending it; LeaseLost when another delivery took the mail over)."""
        await self._lease.save(status)


def _record_sent(status: MailStatus, message: MessageState) -> None:
    status.graph_id = message.id or status.graph_id
    status.internet_message_id = message.internet_message_id or status.internet_message_id
    sent_at = _read_graph_time(message.sent_at)
    status.sent_at = sent_at or datetime.now(UTC)


def _read_graph_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def marked_send_body(mail: MailRequest, mail_id: str, key: str) -> dict[str, Any]:
    """sendMail's body for a mail, its message marked with the mail's id like a draft is (the Sent Items copy
    can then be found by it), and its internetMessageId keyed with the status row's `key`."""
    from .graph import DELIVERY_ID_PROPERTY

    body = graph_send_body(mail)
    body["message"]["singleValueExtendedProperties"] = [{"id": DELIVERY_ID_PROPERTY, "value": mail_id}]
    body["message"]["internetMessageId"] = message_id_for(mail_id, mail.sender or "", key)
    return body


class Modes:
    """Which delivery mode each sending mailbox uses under MAIL_DELIVERY_MODE.

    `draft`: always drafts (a mailbox that refuses them fails its mail with `drafts_not_permitted`);
    `sendmail`: never (mail that needs a draft, i.e. attachments over 3 MB, fails with `draft_required`);
    `auto` (the default): drafts, and sendMail for a mailbox where Graph refused a draft (403), tried again
    after an hour. What each mailbox uses, and why, is kept for the health answer.
    """

    def __init__(self, setting: str) -> None:
        self.setting = setting
        self._refused: dict[str, tuple[float, str]] = {}  # mailbox -> (monotonic time, why)
        self.seen: dict[str, tuple[DeliveryMode, str, datetime]] = {}  # mailbox -> (mode, why, since)

    def mode(self, mailbox: str, needs_draft: bool) -> DeliveryMode:
        if self.setting == DeliveryMode.SENDMAIL:
            return DeliveryMode.SENDMAIL
        if self.setting == DeliveryMode.DRAFT or needs_draft:
            return DeliveryMode.DRAFT
        refused = self._refused.get(mailbox.lower())
        if refused is not None and time.monotonic() - refused[0] < DRAFT_RECHECK_SECONDS:
            return DeliveryMode.SENDMAIL
        return DeliveryMode.DRAFT

    def refused(self, mailbox: str, error: GraphError) -> None:
        why = f"Graph refused a draft ({error.status} {error.code}): no Mail.ReadWrite in this mailbox"
        self._refused[mailbox.lower()] = (time.monotonic(), why)
        self.seen[mailbox.lower()] = (DeliveryMode.SENDMAIL, why, datetime.now(UTC))

    def used(self, mailbox: str, mode: DeliveryMode) -> None:
        key = mailbox.lower()
        if mode == DeliveryMode.DRAFT:
            self._refused.pop(key, None)
            why = "drafts work in this mailbox: exactly once"
        elif self.setting == DeliveryMode.SENDMAIL:
            why = "MAIL_DELIVERY_MODE=sendmail"
        else:
            why = self._refused.get(key, (0.0, "drafts refused"))[1]
        if self.seen.get(key, (None,))[0] != mode:
            self.seen[key] = (mode, why, datetime.now(UTC))

    def health(self) -> dict[str, Any]:
        """The health entry: failing when MAIL_DELIVERY_MODE=draft meets a mailbox that refuses drafts."""
        refused = any(mode == DeliveryMode.SENDMAIL for mode, _, _ in self.seen.values())
        return {"ok": not (self.setting == DeliveryMode.DRAFT and refused), **self.describe()}

    def describe(self) -> dict[str, Any]:
        """The mode in force, and per mailbox what this instance has seen (for the keyed health answer)."""
        return {
            "setting": self.setting,
            "why": DELIVERY_MODES[self.setting],
            "mailboxes": {
                mailbox: {"mode": str(mode), "why": why, "since": since.strftime("%Y-%m-%dT%H:%M:%SZ")}
                for mailbox, (mode, why, since) in sorted(self.seen.items())
            },
        }


_modes: dict[str, Modes] = {}


def delivery_modes(setting: str) -> Modes:
    """The process's `Modes` for a MAIL_DELIVERY_MODE value (what it learns outlives one invocation)."""
    return _modes.setdefault(setting, Modes(setting))


def forget_delivery_modes() -> None:
    """Forget what this process learnt about its mailboxes (tests that share one process)."""
    _modes.clear()
