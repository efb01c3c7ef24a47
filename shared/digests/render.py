"""Render the digests: the mailbox digest (per-folder counts, the newest items with sender, subject, age,
preview and a link to open each, "and N more") and the alert digest (alerts by name and severity, with
counts, first and last seen, and links). Outlook-safe HTML, from `shared/templates/`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from ..alerts.model import SEVERITIES, Alert
from ..alerts.render import SEVERITY_COLOURS
from ..templating import RenderedMail, one_line, render_mail, when

if TYPE_CHECKING:
    from ..routing_file import MailboxDigest


@dataclass(frozen=True)
class FolderCount:
    path: str
    count: int


@dataclass(frozen=True)
class DigestItem:
    """One message as the digest lists it."""

    folder: str
    sender: str
    subject: str
    preview: str
    received: str
    age: str
    link: str

    @classmethod
    def from_graph(cls, message: dict[str, Any], now: datetime) -> DigestItem:
        address = ((message.get("from") or {}).get("emailAddress")) or {}
        sender = address.get("name") or address.get("address") or "(unknown sender)"
        received = str(message.get("receivedDateTime") or "")
        link = str(message.get("webLink") or "")
        return cls(
            folder=str(message.get("folder", "")),
            sender=one_line(str(sender), 120),
            subject=one_line(str(message.get("subject") or "(no subject)"), 200),
            preview=one_line(str(message.get("bodyPreview") or ""), 160),
            received=received,
            age=_age(received, now),
            link=link if link.startswith("https://") else "",
        )


def _age(received: str, now: datetime) -> str:
    """`5 min`, `3 h`, `2 d`: how long a message has waited."""
    try:
        moment = datetime.fromisoformat(received.replace("Z", "+00:00"))
    except ValueError:
        return ""
    minutes = max(0, int((now - moment).total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} d"


def render_mailbox_digest(
    digest: MailboxDigest,
    folders: list[FolderCount],
    items: list[DigestItem],
    total: int,
    now: datetime,
    notes: Sequence[str] = (),
) -> RenderedMail:
    """The mailbox digest: `new` mail since the last digest, or mail `waiting` (unread); `notes` say what
    changed about the folders read."""
    kind = "new" if digest.kind == "new" else "waiting"
    subject = one_line(f"[DIGEST] {total} {kind} in {digest.mailbox} ({digest.name})")
    by_folder: dict[str, list[DigestItem]] = {}
    for item in items:
        by_folder.setdefault(item.folder, []).append(item)
    return render_mail(
        "digest_mailbox",
        subject,
        digest=digest,
        folders=[f for f in folders if f.count],
        empty_folders=[f for f in folders if not f.count],
        by_folder=by_folder,
        total=total,
        more=max(0, total - len(items)),
        notes=list(notes),
        now=now,
        zone=digest.zone,
    )


@dataclass(frozen=True)
class AlertDigestLine:
    """Alerts of one name and severity in an alert digest."""

    name: str
    severity: str
    count: int
    firing: int
    first_seen: str
    last_seen: str
    summary: str
    links: dict[str, str]


def alert_digest_lines(entries: list[tuple[Alert, datetime]], zone: tzinfo = UTC) -> list[AlertDigestLine]:
    """(alert, last seen) pairs gathered by alert name and severity, most severe and most frequent first; the
    first and last seen times written in `zone` (the receiver's)."""
    gathered: dict[tuple[str, str], list[tuple[Alert, datetime]]] = {}
    for alert, seen in entries:
        gathered.setdefault((alert.name, alert.severity), []).append((alert, seen))
    lines = []
    for (name, severity), members in gathered.items():
        first_seen = min([a.starts_at for a, _ in members if a.starts_at] or [s for _, s in members])
        last_seen = max(s for _, s in members)
        first = members[0][0]
        lines.append(
            AlertDigestLine(
                name=name,
                severity=severity,
                count=len(members),
                firing=sum(1 for a, _ in members if a.status == "firing"),
                first_seen=when(first_seen, zone),
                last_seen=when(last_seen, zone),
                summary=first.summary,
                links=first.links,
            )
        )
    rank = {s: n for n, s in enumerate(SEVERITIES)}
    return sorted(lines, key=lambda line: (rank.get(line.severity, 9), -line.count, line.name))


def render_alert_digest(
    receiver: str, lines: list[AlertDigestLine], now: datetime, shown: int | None = None, zone: tzinfo = UTC
) -> RenderedMail:
    """The alert digest of all `lines`, listing the first `shown` of them (all by default) and counting the rest;
    its dates in `zone` (the receiver's)."""
    total = sum(line.count for line in lines)
    listed = lines if shown is None else lines[:shown]
    subject = one_line(f"[ALERT DIGEST] {total} alerts, {len(lines)} kinds ({receiver})")
    return render_mail(
        "digest_alerts",
        subject,
        receiver=receiver,
        lines=listed,
        kinds=len(lines),
        more=len(lines) - len(listed),
        total=total,
        colours=SEVERITY_COLOURS,
        now=now,
        zone=zone,
    )
