"""Exchange Online's transport for submitted mail: sending limits, delayed delivery and non-delivery reports.

A submitted message (sendMail, or a draft's /send) is accepted (202) and then, per sending mailbox:
- beyond `messagesPerMinute` it is delivered later, the excess carried over into the following minutes;
- beyond `recipientsPerDay` recipients (to + cc + bcc) in a rolling 24 hours it is not delivered, an NDR
  `550 5.1.90` lands in the sender's Inbox, and the mailbox stays blocked for 24 hours;
- over `maxMessageSizeMB` it gets an NDR `550 5.3.4`;
- recipients in the tenant's domain that do not exist get an NDR `550 5.1.10`; external ones are recorded.
"""

from __future__ import annotations

import html
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .clock import CLOCK, stamp
from .messages import build_message, message_size, new_id, new_immutable_id, stamp_origin
from .store import Store, User

MINUTE = 60.0
DAY = 86_400.0
NDR_SENDER_NAME = "Microsoft Outlook"
NDR_SENDER_LOCAL = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e"
NDR_GENERATING_SERVER = "SANDBOX01MB0001.namprd00.prod.outlook.com"
NDR_STATUS = {
    "5.1.90": "550 5.1.90 Your message can't be sent because you've reached your daily limit for message recipients.",
    "5.3.4": "550 5.3.4 ROUTING.SizeLimit; message size exceeds fixed maximum size for route",
    "5.1.10": "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
}


@dataclass
class SendingWindow:
    """A mailbox's recent sending, kept in memory so a send costs no scan of the outbound log."""

    deliveries: deque[float] = field(default_factory=deque)  # the latest delivery times, oldest first
    counted: deque[tuple[float, int]] = field(default_factory=deque)  # (submitted, recipients) in 24 h
    recipients: int = 0
    blocked_until: float = 0.0  # after the recipient budget ran out (persisted in the store too)

    def recipients_in_day(self, now: float) -> int:
        while self.counted and self.counted[0][0] <= now - DAY:
            self.recipients -= self.counted.popleft()[1]
        return self.recipients

    def delivery_time(self, now: float, per_minute: int | None) -> float:
        """When the next message may go: no more than `per_minute` deliveries in any 60 seconds."""
        if per_minute is None or len(self.deliveries) < per_minute:
            return now
        return max(now, self.deliveries[-per_minute] + MINUTE)

    def record(self, submitted: float, delivered: float | None, counted: int, keep: int) -> None:
        if delivered is not None:
            self.deliveries.append(delivered)
            while len(self.deliveries) > keep:
                self.deliveries.popleft()
        if counted:
            self.counted.append((submitted, counted))
            self.recipients += counted


class Transport:
    """Submits messages for a store: decides delivery times and NDRs, and records what happened."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.windows: dict[str, SendingWindow] = {}

    def forget(self) -> None:
        """Drop the in-memory windows (after a reset of the store)."""
        self.windows.clear()

    def _window(self, sender: User) -> SendingWindow:
        window = self.windows.get(sender.upn)
        if window is None:
            window = SendingWindow(blocked_until=self.store.blocked_until(sender))
            for row in self.store.sending_history(sender, CLOCK.time() - DAY):
                window.record(row["submitted"], row["delivered"], row["counted"], keep=10_000)
            self.windows[sender.upn] = window
        return window

    def submit(self, sender: User, document: dict[str, Any], recipients: list[str], saved: bool) -> dict[str, Any]:
        """Deliver (now or later) or refuse a sent message; returns its outbound record. Call in a transaction."""
        now = CLOCK.time()
        limits = self.store.exchange_limits(sender)
        window = self._window(sender)
        refused: str | None = None
        delivered: float | None = now
        if limits.enabled:
            size_limit = limits.max_message_size_mb
            if size_limit is not None and message_size(document) > size_limit * 1024 * 1024:
                refused = "5.3.4"
            elif window.blocked_until > now:
                refused = "5.1.90"
            elif (
                limits.recipients_per_day is not None
                and window.recipients_in_day(now) + len(recipients) > limits.recipients_per_day
            ):
                refused = "5.1.90"
                window.blocked_until = now + DAY
                self.store.block(sender, window.blocked_until)
            else:
                delivered = window.delivery_time(now, limits.messages_per_minute)
        domain = "@" + self.store.tenant_domain()
        external: list[str] = []
        unknown: list[str] = []
        if refused:
            delivered = None
        else:
            for address in dict.fromkeys(recipients):
                try:
                    recipient = self.store.user(address)
                except KeyError:
                    (unknown if limits.enabled and address.endswith(domain) else external).append(address)
                    continue
                inbox = self.store.folder(recipient, "inbox")
                copy = dict(
                    document,
                    id=new_id(),
                    immutableId=new_immutable_id(),
                    parentFolderId=inbox.id,
                    isRead=False,
                    bccRecipients=[],
                    receivedDateTime=stamp(delivered or now),
                    internetMessageHeaders=stamp_origin(document.get("internetMessageHeaders") or [], "Internal"),
                )
                self.store.insert_message(recipient, copy, visible=delivered)
        counted = 0 if refused else len(recipients)
        window.record(now, delivered, counted, keep=max(limits.messages_per_minute or 1, 1))
        ndr: dict[str, Any] | None = None
        code: str | None = None
        if refused or unknown:
            code = refused or "5.1.10"
            failed = list(dict.fromkeys(recipients)) if refused else unknown
            ndr = {"status": NDR_STATUS[code], "code": code, "recipients": failed}
            self._deliver_ndr(sender, document, code, failed, now)
        record = {k: v for k, v in document.items() if k not in {"attachments", "immutableId"}}
        record["attachments"] = [
            {k: v for k, v in a.items() if k != "contentBytes"} for a in document.get("attachments", [])
        ]
        record.update(externalRecipients=external, savedToSentItems=saved, ndr=ndr)
        self.store.record_outbound(sender, record, submitted=now, delivered=delivered, counted=counted, ndr=code)
        return record

    def _deliver_ndr(self, sender: User, original: dict[str, Any], code: str, failed: list[str], at: float) -> None:
        """The non-delivery report Exchange Online puts in the sender's Inbox: from its system mailbox, a
        `multipart/report; report-type=delivery-status` marked as an NDR, made inside the tenant, its text naming
        each failed recipient with the SMTP reply, then the original's headers (its Message-ID among them)."""
        domain = self.store.tenant().get("domain", "sandbox.test")
        message_id = str(original.get("internetMessageId", ""))
        listed = "".join(f"<li>{html.escape(address)}</li>" for address in failed)
        replies = "".join(
            f"<p>{html.escape(address)}<br>Remote Server returned '{html.escape(NDR_STATUS[code])}'</p>"
            for address in failed
        )
        content = (
            "<p>Your message couldn't be delivered.</p>"
            f"<p>Delivery has failed to these recipients or groups:</p><ul>{listed}</ul>"
            "<p>Diagnostic information for administrators:</p>"
            f"<p>Generating server: {NDR_GENERATING_SERVER}</p>{replies}"
            "<p>Original message headers:</p>"
            f"<pre>From: {html.escape(sender.upn)}\n"
            f"Message-ID: {html.escape(message_id)}\n"
            f"Subject: {html.escape(original.get('subject', ''))}\n"
            f"Date: {html.escape(original.get('sentDateTime', ''))}</pre>"
        )
        boundary = f"_000_{new_id()[:24]}_"
        report = build_message(
            {
                "subject": f"Undeliverable: {original.get('subject', '')}",
                "from": {"emailAddress": {"name": NDR_SENDER_NAME, "address": f"{NDR_SENDER_LOCAL}@{domain}"}},
                "toRecipients": [sender.upn],
                "body": {"contentType": "html", "content": content},
                "internetMessageHeaders": [
                    {
                        "name": "Content-Type",
                        "value": f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
                    },
                    {"name": "X-MS-Exchange-Message-Is-Ndr", "value": ""},
                    {"name": "In-Reply-To", "value": message_id},
                    {"name": "References", "value": message_id},
                    {"name": "Auto-Submitted", "value": "auto-replied"},
                    {"name": "X-MS-Exchange-Organization-AuthAs", "value": "Internal"},
                    {"name": "X-MS-Exchange-Organization-SCL", "value": "-1"},
                ],
            },
            folder_id=self.store.folder(sender, "inbox").id,
            is_read=False,
            received=stamp(at),
        )
        self.store.insert_message(sender, report, visible=at)
