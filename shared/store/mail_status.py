"""Mail status: one row per mail id in the `mailstatus` table, what `GET /api/mail/{id}` answers and what
the sender keeps its claim (lease) and outcome in. Writes are guarded by ETags."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .storage import STATUS_TABLE, StatusChanged, Storage, read_time, time_text

_ROW = "status"
_TIMES = ("created", "updated", "lease_until", "sent_at", "drafted_at", "bounced_at", "deferred_until")


class MailState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"  # the sending mailbox's daily budget is short: it goes at `deferred_until`
    BOUNCED = "bounced"  # sent, and a non-delivery report came back for some or all recipients


class DeliveryMode(StrEnum):
    """How a mail goes to Graph: a marked draft and its send (exactly once), or one sendMail call."""

    DRAFT = "draft"
    SENDMAIL = "sendmail"


@dataclass
class MailStatus:
    """The status row of one mail: what `GET /api/mail/{id}` answers, plus what the sender needs."""

    id: str
    status: MailState
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    created: datetime | None = None
    updated: datetime | None = None
    payload_hash: str = ""
    sender: str = ""
    recipient_count: int = 0
    lease_until: datetime | None = None  # while `sending`: until then no other delivery may send it
    mode: str = ""  # a DeliveryMode, once a delivery chose one
    graph_id: str = ""  # the draft's immutable id (it stays the message's id once sent)
    internet_message_id: str = ""
    message_key: str = ""  # the random part of its internetMessageId (never answered: see shared/bounces.py)
    recipient_tags: str = ""  # its recipients as keyed hashes, to check a report's (never answered)
    drafted_at: datetime | None = None
    uploads: str = ""  # JSON: the attachments added to the draft after it was created (never answered)
    sent_at: datetime | None = None
    outcome_unknown: bool = False  # the last attempt ended without knowing whether Graph took the mail
    possible_duplicate: bool = False  # sendMail mode: sent by a retry after an unknown outcome
    bounce_code: str = ""
    bounce_diagnostic: str = ""
    bounced_recipients: str = ""  # comma-separated
    bounced_at: datetime | None = None
    etag: str | None = field(default=None, repr=False)
    lane: str = ""  # its priority lane (`shared.budgets.Lane`), once the pacer has seen it
    deferred_until: datetime | None = None  # while `deferred`: when the budget lets it go
    ticket: int | None = None  # its place in its lane's line at `held_on`, while the pacer holds it
    held_on: str = ""  # the mailbox (of a pool) whose line it waits in

    @property
    def done(self) -> bool:
        """Sent, bounced or failed: the app will not send this mail (again)."""
        return self.status in (MailState.SENT, MailState.FAILED, MailState.BOUNCED)

    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "status": str(self.status),
            "attempts": self.attempts,
            "updated": time_text(self.updated, micro=True),
        }
        if self.lane:
            body["lane"] = self.lane
        if self.status == MailState.DEFERRED and self.deferred_until is not None:
            body["deferredUntil"] = time_text(self.deferred_until)
        if self.mode:
            body["mode"] = self.mode
        if self.sender:
            body["mailbox"] = self.sender
        if self.sent_at is not None:
            body["sentAt"] = time_text(self.sent_at, micro=True)
        if self.graph_id:
            body["graphMessageId"] = self.graph_id
        if self.internet_message_id:
            body["internetMessageId"] = self.internet_message_id
        if self.possible_duplicate:
            body["possibleDuplicate"] = True
        if self.status == MailState.BOUNCED:
            body["bounce"] = {
                "code": self.bounce_code,
                "diagnostic": self.bounce_diagnostic,
                "recipients": [r for r in self.bounced_recipients.split(",") if r],
                "at": time_text(self.bounced_at, micro=True),
            }
        if self.error_code:
            body["error"] = {"code": self.error_code, "message": self.error_message or ""}
        return body


_FIELDS = tuple(f.name for f in fields(MailStatus) if f.name not in {"id", "etag"})


def _entity(status: MailStatus) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": status.id, "RowKey": _ROW}
    for name in _FIELDS:
        value = getattr(status, name)
        if name in _TIMES:
            value = time_text(value, micro=True)
        elif name == "status":
            value = str(value)
        if value is not None:
            entity[name] = value
    return entity


def _status(row: dict[str, Any]) -> MailStatus:
    values: dict[str, Any] = {name: row.get(name) for name in _FIELDS if row.get(name) is not None}
    for name in _TIMES:
        values[name] = read_time(values.get(name))
    values["status"] = MailState(values["status"])
    return MailStatus(id=row["PartitionKey"], etag=row["etag"], **values)


class MailStatuses:
    """The `mailstatus` table."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def create(self, status: MailStatus) -> MailStatus | None:
        """Insert a new status row; None when one with that id exists already."""
        status.created = status.updated = datetime.now(UTC)
        status.etag = await self._storage.insert_row(STATUS_TABLE, _entity(status))
        return status if status.etag is not None else None

    async def get(self, mail_id: str) -> MailStatus | None:
        row = await self._storage.get_row(STATUS_TABLE, mail_id, _ROW)
        return _status(row) if row is not None else None

    async def save(self, status: MailStatus) -> MailStatus:
        """Write a status row back, only if nobody changed it since it was read (ETag; none: whatever is
        there); StatusChanged otherwise."""
        status.updated = datetime.now(UTC)
        try:
            status.etag = await self._storage.replace_row(STATUS_TABLE, _entity(status), status.etag)
        except StatusChanged:
            raise StatusChanged(status.id) from None
        return status

    async def delete(self, mail_id: str) -> None:
        await self._storage.table(STATUS_TABLE).delete_entity(mail_id, _ROW)
