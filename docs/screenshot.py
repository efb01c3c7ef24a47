"""Screenshots of rendered mails for the pages in docs/, taken with headless Chromium (Debian's `chromium`).

`make screenshots` runs it: the alert mail (from the Alertmanager fixture) and a mailbox digest (from sample
messages shaped as Graph lists them) are rendered by the app's own templates and photographed at a phone's
width (390 px: `docs/<name>-390.png`) and a desktop's (1280 px: `docs/<name>-1280.png`), as
`tests/test_templating.py` measures them. Chromium runs with its network features off (`devhost.chromium`),
so nothing leaves the machine.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devhost import chromium  # noqa: E402
from shared.alerts import parse_alerts  # noqa: E402
from shared.alerts.model import AlertGroup  # noqa: E402
from shared.alerts.render import render_group  # noqa: E402
from shared.digests.render import DigestItem, FolderCount, render_mailbox_digest  # noqa: E402
from shared.routing_file import MailboxDigest  # noqa: E402

WIDTHS = (390, 1280)  # a phone's width and a desktop's
# headless Chromium's window is at least 500 px wide: the mail is shown in an iframe of the width (its own
# viewport, as a phone's screen is)
FRAME = (
    '<!DOCTYPE html><html><body style="margin:0;background:#f7fafc">'
    '<iframe style="border:0;display:block" width="{width}" height="{height}" srcdoc="{mail}"></iframe></body></html>'
)


def alert_mail_html() -> str:
    payload = json.loads((ROOT / "tests/alerts/fixtures/alertmanager.json").read_text())
    payload["alerts"].insert(
        1,
        {
            "status": "firing",
            "labels": {"alertname": "DiskFilling", "severity": "high", "instance": "db-3:9100", "mountpoint": "/data"},
            "annotations": {"summary": "/data on db-3 is 88% full", "description": "Growing 2% an hour."},
            "startsAt": "2026-11-23T08:12:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.contoso.test:9090/graph?g0.expr=disk",
            "fingerprint": "3c4d5e6f70819a2b",
        },
    )
    alerts = tuple(parse_alerts(payload))
    group = AlertGroup("oncall", "oncall-example", {"alertname": "DiskFilling"}, alerts)
    return render_group(group, now=datetime(2026, 11, 23, 8, 15, tzinfo=UTC)).html


def mailbox_digest_html() -> str:
    now = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    digest = MailboxDigest(
        name="support-waiting", report="waiting", mailbox="support@contoso.test", to=["alice@contoso.test"], max_items=5
    )
    samples = [
        (
            "Inbox/Escalations",
            "Ops at Fabrikam",
            "Outage in region West",
            "Our users in West cannot reach the API.",
            25,
        ),
        (
            "Inbox/Escalations",
            "Fay Northwind",
            "Data export stuck at 90%",
            "The export has not moved for two hours.",
            58,
        ),
        ("Inbox", "Erik Fabrikam", "Invoice 2026-0412 is wrong", "The invoice lists 12 seats; we have 10.", 130),
        (
            "Inbox",
            "Dana Fabrikam",
            "Cannot log in to the portal",
            "Since this morning the portal rejects my password.",
            410,
        ),
        (
            "Inbox/Billing",
            "Gus Contractor",
            "Refund for order 7781",
            "Please refund the duplicate charge from Friday.",
            1500,
        ),
    ]
    items = [
        DigestItem.from_graph(
            {
                "folder": folder,
                "from": {"emailAddress": {"name": sender, "address": "someone@fabrikam.test"}},
                "subject": subject,
                "bodyPreview": preview,
                "receivedDateTime": (now - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "webLink": f"https://outlook.office365.com/owa/?ItemID=example{n}",
            },
            now,
        )
        for n, (folder, sender, subject, preview, minutes) in enumerate(samples)
    ]
    folders = [FolderCount("Inbox", 9), FolderCount("Inbox/Escalations", 2), FolderCount("Inbox/Billing", 3)]
    return render_mailbox_digest(digest, folders, items, 14, now).html


def photograph(html: str, name: str, height: int) -> None:
    """`docs/<name>-<width>.png` at each of WIDTHS, the first `height` pixels."""
    for width in WIDTHS:
        target = ROOT / "docs" / f"{name}-{width}.png"
        page = FRAME.format(width=width, height=height, mail=escape(html, quote=True))
        chromium.screenshot(page, target, width, height)
        print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    if chromium.browser() is None:
        raise SystemExit("screenshot: Debian's chromium is needed (make debian-tools, or apt-get install chromium)")
    photograph(alert_mail_html(), "alert-mail", 620)
    photograph(mailbox_digest_html(), "mailbox-digest", 900)
