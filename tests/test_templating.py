"""The mail templates as a reader sees them: every kind (alert mail, alert summary, alert digest, mailbox
digest) measured in headless Chromium at a phone's width (390 px) and a desktop's (1280 px): nothing wider than
the window, nothing scrolled sideways, the key texts inside it; readable with images off; one date format,
in the reader's zone."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html import escape, unescape
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devhost import chromium
from shared.alerts.intake import parse_alerts
from shared.alerts.model import AlertGroup
from shared.alerts.render import SEVERITY_COLOURS, render_group
from shared.digests.render import (
    DigestItem,
    FolderCount,
    alert_digest_lines,
    render_alert_digest,
    render_mailbox_digest,
)
from shared.routing_file import MailboxDigest, Receiver
from shared.store.mail_caps import HeldBack
from shared.templating import RenderedMail, render_mail, when

NOW = datetime(2026, 12, 4, 16, 7, 30, tzinfo=UTC)
LONG_HOST = "db-3.storage-cluster-west.eu-west-1.internal.contoso.test:9100"  # no break opportunity
LONG_LINK = "https://grafana.contoso.test/d/abcdef/storage?orgId=1&var-instance=" + "x" * 120
WIDTHS = (390, 1280)
UTC_ZONE = ZoneInfo("UTC")


def alert_mail(zone: ZoneInfo = UTC_ZONE) -> tuple[RenderedMail, list[str]]:
    alerts = parse_alerts(
        {
            "alerts": [
                {
                    "name": "DiskFilling",
                    "severity": "critical",
                    "summary": "/data on db-3 is 97% full",
                    "description": "Predicted full within 2 hours. " + "Growing " * 30,
                    "labels": {"instance": LONG_HOST, "mountpoint": "/data", "team": "storage"},
                    "startsAt": "2026-12-04T15:40:00Z",
                    "links": {"dashboard": LONG_LINK, "runbook": "https://runbooks.contoso.test/disk"},
                },
                {"name": "DiskFilling", "severity": "high", "summary": "/var on db-1 is 88% full"},
            ]
        }
    )
    group = AlertGroup("oncall", "k", {"alertname": "DiskFilling"}, tuple(alerts))
    return render_group(group, now=NOW, zone=zone), ["[FIRING:2] DiskFilling", LONG_HOST, "/data on db-3", "UTC."]


def alert_summary() -> tuple[RenderedMail, list[str]]:
    receiver = Receiver(name="oncall", to=["alice@contoso.test"])
    held = [
        HeldBack(f"g{n}", f"[FIRING:{n}] DiskFilling ({LONG_HOST})", "firing", n, NOW - timedelta(minutes=n))
        for n in range(1, 4)
    ]
    subject = "[SUMMARY] 3 more alert group notices for oncall (over 20 per 5m)"
    mail = render_mail("alert_summary", subject, receiver=receiver, held=held, more=0, total=3, zone=UTC)
    return mail, ["[SUMMARY] 3 more", "[FIRING:3] DiskFilling", "3 alerts"]


def alert_digest() -> tuple[RenderedMail, list[str]]:
    alerts = parse_alerts(
        {
            "alerts": [
                {
                    "name": "CertificateExpiringOnTheLoadBalancerFrontend",
                    "severity": "warning",
                    "labels": {"i": str(n)},
                    "summary": f"The certificate of {LONG_HOST} expires in 9 days",
                    "links": {"source": LONG_LINK},
                }
                for n in range(7)
            ]
            + [{"name": "QueueBacklog", "severity": "info", "summary": "orders queue holds 1,200 messages"}]
        }
    )
    lines = alert_digest_lines([(a, NOW - timedelta(minutes=n)) for n, a in enumerate(alerts)])
    mail = render_alert_digest("low-priority", lines, NOW)
    return mail, ["8 alerts since the last digest", "CertificateExpiringOnTheLoadBalancerFrontend", "7", "last "]


def mailbox_digest(zone: str | None = None) -> tuple[RenderedMail, list[str]]:
    digest = MailboxDigest(
        name="support-waiting",
        report="waiting",
        mailbox="support@contoso.test",
        to=["alice@contoso.test"],
        timezone=zone,
    )
    items = [
        DigestItem.from_graph(
            {
                "folder": "Inbox/Escalations/Tier 3 customers with a long folder name",
                "from": {"emailAddress": {"name": "Ops at Fabrikam", "address": "ops@fabrikam.test"}},
                "subject": f"Outage in region West: {LONG_HOST} unreachable since this morning {n}",
                "bodyPreview": "Our users in West cannot reach the API. " * 4,
                "receivedDateTime": (NOW - timedelta(minutes=25 + n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "webLink": f"https://outlook.office365.com/owa/?ItemID={'A' * 150}{n}",
            },
            NOW,
        )
        for n in range(3)
    ]
    folders = [FolderCount("Inbox", 9), FolderCount("Inbox/Escalations/Tier 3 customers with a long folder name", 3)]
    mail = render_mailbox_digest(digest, folders, items, 12, NOW)
    return mail, ["12 waiting in support@contoso.test", "Outage in region West", "25 min", "and 9 more"]


KINDS: dict[str, Callable[[], tuple[RenderedMail, list[str]]]] = {
    "alert mail": alert_mail,
    "alert summary": alert_summary,
    "alert digest": alert_digest,
    "mailbox digest": mailbox_digest,
}

# Runs in each mail: its window's width, its scroll width, every element that reaches past the window (clipped
# or scrolled sideways on a phone), where each key text starts and ends, and the card's colours; written into
# the outer page's DOM for --dump-dom. Each mail is shown in an iframe of the width measured (headless
# Chromium's window is at least 500 px wide, and an iframe is a viewport of its own, as a phone's screen is);
# all four kinds in one page, so one browser measures them.
MEASURE = """<script>
(function () {
  var kind = %s, keys = %s, width = document.documentElement.clientWidth, found = {}, wide = [];
  document.querySelectorAll("body *").forEach(function (e) {
    var r = e.getBoundingClientRect();
    if (r.width > 0 && (r.right > width + 0.5 || r.left < -0.5))
      wide.push(e.tagName + ": " + e.textContent.slice(0, 60));
  });
  keys.forEach(function (key) {
    var walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), range = document.createRange();
    while (walk.nextNode()) {
      if (walk.currentNode.nodeValue.indexOf(key) >= 0) {
        range.selectNodeContents(walk.currentNode);
        var r = range.getBoundingClientRect();
        found[key] = [r.left, r.right];
        return;
      }
    }
  });
  var card = document.querySelector(".mail-card") || document.body, first = card.querySelector("td");
  var out = parent.document.createElement("pre");
  out.className = "measured";
  out.textContent = JSON.stringify({kind: kind, width: width, scrollWidth: document.documentElement.scrollWidth,
                                    wide: wide, found: found, card: getComputedStyle(card).backgroundColor,
                                    text: getComputedStyle(first).color});
  parent.document.body.appendChild(out);
})();
</script>"""
FRAME = '<iframe style="border:0;display:block" width="%d" height="900" srcdoc="%s"></iframe>'


@functools.cache
def measure(width: int, dark: bool = False) -> dict[str, dict[str, Any]]:
    """Every kind's measurements at `width` (in dark mode: `dark`), by kind."""
    frames = []
    for kind, make in KINDS.items():
        mail, keys = make()
        script = MEASURE % (json.dumps(kind), json.dumps(keys))
        frames.append(FRAME % (width, escape(mail.html.replace("</body>", script + "</body>"), quote=True)))
    page = '<!DOCTYPE html><html><body style="margin:0">' + "".join(frames) + "</body></html>"
    dom = chromium.dump_dom(page, max(width, 500) + 100, 4 * 900, dark=dark)
    measured = [json.loads(unescape(m)) for m in re.findall(r'<pre class="measured">(.*?)</pre>', dom, re.S)]
    assert sorted(m["kind"] for m in measured) == sorted(KINDS), dom[-2000:]
    return {m["kind"]: m for m in measured}


@pytest.fixture(scope="module")
def browser() -> str:
    """Debian's chromium; without it the test says why it skips, and fails under CI (`make test` installs it
    where the machine allows: `make debian-tools`)."""
    executable = chromium.browser()
    if executable is None:
        reason = "Debian's chromium is not installed (make debian-tools, or apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return executable


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_mail_fits_a_phone_and_a_desktop_window_without_scrolling_sideways(
    browser: str, kind: str, width: int
) -> None:
    keys = KINDS[kind]()[1]
    measured = measure(width)[kind]
    assert measured["width"] == width
    assert measured["scrollWidth"] == width, f"{kind} scrolls sideways at {width} px"
    assert measured["wide"] == [], f"{kind}: elements past the window's edge at {width} px"
    found = measured["found"]
    assert isinstance(found, dict) and set(found) == set(keys), f"{kind}: key texts missing: {keys}"
    for key, (left, right) in found.items():
        assert left >= 0 and right <= width, f"{kind}: {key!r} is cut off at {width} px ({left}..{right})"


def test_on_a_desktop_every_mail_is_a_640_px_column_and_outlook_for_windows_gets_a_fixed_table() -> None:
    for kind, make in KINDS.items():
        html = make()[0].html
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html, kind
        assert "max-width:640px" in html and 'width="640"' not in html.split("<!--[if mso]>")[0], kind
        assert '<!--[if mso]><table role="presentation" width="640"' in html, kind
        assert '<meta name="color-scheme" content="light dark">' in html, kind
        assert "prefers-color-scheme: dark" in html and "[data-ogsc]" in html, kind


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        styles = " ".join(v or "" for k, v in attrs if k in ("style", "background"))
        if tag in ("img", "picture", "svg", "v:image") or "url(" in styles or any(k == "background" for k, _ in attrs):
            self.found.append(tag)


def test_every_mail_reads_with_images_off_it_has_none() -> None:
    for kind, make in KINDS.items():
        parser = _Images()
        parser.feed(make()[0].html)
        assert parser.found == [], kind


DATE = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?(?:Z| [A-Z][A-Za-z+\-0-9]*)?")


def test_every_mail_writes_dates_one_way_and_names_the_zone() -> None:
    for kind, make in KINDS.items():
        dates = set(DATE.findall(make()[0].html))
        assert dates, kind
        assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", d) for d in dates), (kind, dates)


def test_a_receivers_timezone_gives_the_dates_in_its_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    mail, _ = alert_mail(berlin)
    assert "since 2026-12-04 16:40 CET" in mail.html and "at 2026-12-04 17:07 CET." in mail.html
    assert "as of 2026-12-04 17:07 CET" in mailbox_digest("Europe/Berlin")[0].html
    assert when(datetime(2026, 7, 1, 5, 0, tzinfo=UTC), ZoneInfo("Europe/Berlin")) == "2026-07-01 07:00 CEST"
    receiver = Receiver(name="oncall", to=["alice@contoso.test"], timezone="America/New_York")
    assert receiver.zone.key == "America/New_York" and receiver.own_schedule() is None


def test_the_severity_colours_are_the_ones_the_tags_keep_in_dark_mode() -> None:
    html = alert_mail()[0].html
    assert f'class="mail-tag" style="color:{SEVERITY_COLOURS["critical"]}' in html


def _luminance(colour: object) -> float:
    red, green, blue = (int(c) for c in re.findall(r"\d+", str(colour))[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


@pytest.mark.parametrize("kind", list(KINDS))
def test_in_dark_mode_every_mail_is_light_text_on_a_dark_card(browser: str, kind: str) -> None:
    light, dark = measure(390)[kind], measure(390, dark=True)[kind]
    assert _luminance(light["card"]) > 0.9 and _luminance(light["text"]) < 0.3
    assert _luminance(dark["card"]) < 0.2 and _luminance(dark["text"]) > 0.8, dark
    assert dark["scrollWidth"] == 390
