"""Digest rendering on its own: ages, the cap with "and N more", escaping, and the alert digest's lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.alerts.intake import parse_alerts
from shared.digests.render import (
    DigestItem,
    FolderCount,
    alert_digest_lines,
    render_alert_digest,
    render_mailbox_digest,
)
from shared.routing_file import MailboxDigest

NOW = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
DIGEST = MailboxDigest(name="support-unread", mailbox="support@contoso.test", to=["alice@contoso.test"])


def _message(subject: str, minutes: int, link: str = "https://outlook.office365.com/owa/?ItemID=1") -> DigestItem:
    return DigestItem.from_graph(
        {
            "folder": "Inbox",
            "from": {"emailAddress": {"name": "Dana <dana@fabrikam.test>", "address": "dana@fabrikam.test"}},
            "subject": subject,
            "bodyPreview": "line one\r\nline two",
            "receivedDateTime": (NOW - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "webLink": link,
        },
        NOW,
    )


def test_ages_read_as_minutes_hours_and_days() -> None:
    assert [_message("s", m).age for m in (5, 150, 4000)] == ["5 min", "2 h", "2 d"]


def test_the_mailbox_digest_escapes_what_senders_wrote_and_counts_the_rest() -> None:
    items = [_message('<script>alert("x")</script>', 5), _message("plain", 9, link="javascript:alert(1)")]
    mail = render_mailbox_digest(DIGEST, [FolderCount("Inbox", 40)], items, 40, NOW)
    assert "<script>" not in mail.html and "&lt;script&gt;" in mail.html
    assert "Dana &lt;dana@fabrikam.test&gt;" in mail.html
    assert "javascript:" not in mail.html  # only https links are kept
    assert "and 38 more" in mail.html
    assert "line one line two" in mail.html  # previews are one line
    assert mail.subject == "[DIGEST] 40 waiting in support@contoso.test (support-unread)"


def test_the_alert_digest_gathers_alerts_by_name_and_severity_most_severe_first() -> None:
    alerts = parse_alerts(
        {
            "alerts": [
                {"name": "QueueBacklog", "severity": "info", "labels": {"q": "a"}},
                {"name": "CertExpiring", "severity": "warning", "labels": {"host": "web-1"}},
                {"name": "CertExpiring", "severity": "warning", "labels": {"host": "web-2"}, "status": "resolved"},
            ]
        }
    )
    lines = alert_digest_lines([(a, datetime(2026, 11, 23, 6, n, tzinfo=UTC)) for n, a in enumerate(alerts)])
    assert [(line.name, line.count, line.firing) for line in lines] == [("CertExpiring", 2, 1), ("QueueBacklog", 1, 1)]
    assert lines[0].last_seen == "2026-11-23 06:02 UTC"  # the one date format of every mail
    mail = render_alert_digest("low-priority", lines, NOW)
    assert mail.subject == "[ALERT DIGEST] 3 alerts, 2 kinds (low-priority)"
    assert "1 still firing" in mail.html
