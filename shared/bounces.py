"""What became of sent mail: non-delivery reports in the sending mailboxes' Inboxes, matched to the mails they
report on, turn those mails' status into `bounced`.

Every mail the app sends carries an internetMessageId made from its id and a random key kept in its status row
(`message_id_for`), in either delivery mode; an NDR quotes the bounced mail's Message-ID, which gives the mail's
id back (`mail_id_from`) without an index, and the key proves the report quotes a Message-ID only the mail's
recipients have seen. A report counts only when Exchange wrote it (`GraphClient.list_bounces`) to the mail's own
sending mailbox, quotes that mail's Message-ID, and names recipients of that mail (others are ignored). A timer
searches each allowed sender's Inbox every few minutes from where the last search ended (a mailbox the app may
not read is noted and skipped: reading it needs Mail.Read, which Mail.ReadWrite includes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .audit import audit
from .config import Settings
from .errors import GraphError
from .mail import ID_PATTERN
from .store import StatusChanged, Store
from .store.mail_status import MailState, MailStatus

if TYPE_CHECKING:
    from .graph import Bounce, GraphClient

log = logging.getLogger("notifier.bounces")

FIRST_LOOKBACK = timedelta(days=1)  # a mailbox never searched before: its last day
OVERLAP = timedelta(minutes=10)  # each search reaches back this far before the last one ended (late NDRs)
_OURS = re.compile(r"^<([a-z2-7]+)\.(?:[0-9a-f]{32}\.)?notify@[^<>\s]+>\Z")


def new_message_key() -> str:
    """The random part of a mail's internetMessageId, made once when a delivery first claims the mail and kept
    in its status row, so every retry and instance sends the same Message-ID."""
    return secrets.token_hex(16)


def message_id_for(mail_id: str, sender: str, key: str) -> str:
    """The internetMessageId a mail is sent with: its id in base32 (RFC 5322's atext) and its key, in the
    sender's domain (an empty key: the form of mails sent before keys, which no bounce is matched to)."""
    code = base64.b32encode(mail_id.encode()).decode().rstrip("=").lower()
    keyed = f".{key}" if key else ""
    return f"<{code}{keyed}.notify@{sender.rsplit('@', 1)[-1].lower()}>"


def recipient_tags(key: str, recipients: list[str]) -> str:
    """The mail's recipients as the status row keeps them (comma-separated, keyed hashes: no address is
    stored), to tell a report's recipients that are the mail's own from any others it names."""
    return ",".join(sorted({_tag(key, address) for address in recipients}))


def _tag(key: str, address: str) -> str:
    return hmac.new(key.encode(), address.strip().lower().encode(), hashlib.sha256).hexdigest()[:16]


def mail_id_from(message_id: str | None) -> str | None:
    """The mail id a `message_id_for` Message-ID holds; None for any other."""
    found = _OURS.match((message_id or "").strip())
    if found is None:
        return None
    code = found.group(1).upper()
    try:
        mail_id = base64.b32decode(code + "=" * (-len(code) % 8)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return mail_id if ID_PATTERN.match(mail_id) else None


@dataclass
class BounceCheck:
    """One mailbox's search: NDRs read, mails marked bounced, or why it could not be searched."""

    mailbox: str
    reports: int = 0
    bounced: list[str] = field(default_factory=list)
    error: str = ""


async def check_bounces(settings: Settings, store: Store, graph: GraphClient, now: datetime) -> list[BounceCheck]:
    """Search every allowed sender's Inbox for NDRs since the last search and mark the mails they report on."""
    checks = []
    for mailbox in sorted(settings.mail_allowed_senders):
        check = BounceCheck(mailbox)
        try:
            since = await store.mailboxes.bounces_checked(mailbox)
            since = (since - OVERLAP) if since is not None else now - FIRST_LOOKBACK
            for bounce in await graph.list_bounces(mailbox, since=since):
                check.reports += 1
                if await _mark_bounced(settings, store, mailbox, bounce):
                    check.bounced.append(str(mail_id_from(bounce.internet_message_id)))
            await store.mailboxes.note_bounces_checked(mailbox, now)
        except GraphError as error:  # e.g. 403: the app may send from this mailbox but not read it
            check.error = f"Graph {error.status} {error.code}"
            log.warning("bounce search of %s failed: %s", mailbox, check.error)
        checks.append(check)
    return checks


async def _mark_bounced(settings: Settings, store: Store, mailbox: str, bounce: Bounce) -> bool:
    """Turn the reported mail's status into `bounced` (recipients added up over several NDRs); True when it
    changed."""
    mail_id = mail_id_from(bounce.internet_message_id)
    if mail_id is None:
        return False
    for _ in range(3):  # a concurrent edit of the row: read it again
        status = await store.statuses.get(mail_id)
        if status is None or status.status not in (MailState.SENT, MailState.BOUNCED):
            return False
        if not _reports_on(status, mailbox, bounce):
            return False
        own = set(status.recipient_tags.split(","))
        known = [r for r in status.bounced_recipients.split(",") if r]
        reported = [r.lower() for r in bounce.recipients if _tag(status.message_key, r) in own]
        added = [r for r in dict.fromkeys(reported) if r not in known]
        if not reported:
            return False
        if status.status == MailState.BOUNCED and not added:
            return False
        status.status = MailState.BOUNCED
        status.bounce_code = status.bounce_code or bounce.dsn_code or ""
        status.bounce_diagnostic = status.bounce_diagnostic or (bounce.diagnostic or "")[:500]
        status.bounced_recipients = ",".join(known + added)
        status.bounced_at = status.bounced_at or datetime.now(UTC)
        try:
            await store.statuses.save(status)
        except StatusChanged:
            continue
        await audit(
            store,
            settings,
            operation="bounce",
            mailbox=mailbox,
            outcome="bounced",
            caller="bounce-check",
            correlation_id=mail_id,
            recipients=added,
            detail=bounce.dsn_code or "",
        )
        return True
    return False


def _reports_on(status: MailStatus, mailbox: str, bounce: Bounce) -> bool:
    """Whether the report is about this very mail: found in the mailbox it was sent from, quoting the keyed
    Message-ID it was sent with (not one computed from its id)."""
    if not status.message_key or status.sender.lower() != mailbox.lower():
        return False
    sent_with = message_id_for(status.id, status.sender, status.message_key)
    return hmac.compare_digest(sent_with.lower().encode(), (bounce.internet_message_id or "").strip().lower().encode())
