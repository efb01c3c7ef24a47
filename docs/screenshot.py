"""Screenshots of rendered mails for the README, taken with headless Chromium (Debian's `chromium`).

`make screenshots` runs it: the alert mail (from the Alertmanager fixture) and a mailbox digest (from sample
messages shaped as Graph lists them) are rendered by the app's own templates, written to a temporary file
and photographed. Chromium runs with its network features off, so
nothing leaves the machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.alerts import parse_alerts  # noqa: E402
from shared.alerts.model import AlertGroup  # noqa: E402
from shared.alerts.render import render_group  # noqa: E402
from shared.alerts.routing import MailboxDigest  # noqa: E402
from shared.digests.render import DigestItem, FolderCount, render_mailbox_digest  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


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
        name="support-unread", mailbox="support@contoso.test", to=["alice@contoso.test"], max_items=5
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


def photograph(html: str, target: Path, size: str = "760,470") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("screenshot: Debian's chromium is needed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "mail.html"
        page.write_text(html, encoding="utf-8")
        subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={folder}/profile",
                f"--window-size={size}",
                f"--screenshot={target}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    photograph(alert_mail_html(), ROOT / "docs" / "alert-mail.png")
    photograph(mailbox_digest_html(), ROOT / "docs" / "mailbox-digest.png", size="760,820")
