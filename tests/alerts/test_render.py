"""Render: readable, Outlook-safe mails whose content can never inject HTML or headers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

from shared.alerts import parse_alerts
from shared.alerts.model import AlertGroup
from shared.alerts.render import DISPLAY_CAP, MAIL_BUDGET, render_group, subject_of

FIXTURES = Path(__file__).parent / "fixtures"


def _group(alerts: list[dict[str, object]], labels: dict[str, str] | None = None) -> AlertGroup:
    parsed = tuple(a for body in alerts for a in parse_alerts(body))
    return AlertGroup("oncall", "k", labels or {"alertname": parsed[0].name}, parsed)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]


def test_subject_says_status_count_and_name_like_alertmanager() -> None:
    group = _group(
        [{"name": "DiskFilling", "labels": {"instance": f"db-{n}"}, "severity": "critical"} for n in range(3)],
        {"alertname": "DiskFilling", "cluster": "eu-1"},
    )
    assert subject_of(group) == "[FIRING:3] DiskFilling (eu-1)"
    resolved = _group([{"name": "DiskFilling", "status": "resolved"}])
    assert subject_of(resolved) == "[RESOLVED] DiskFilling"


def test_the_mail_lists_alerts_with_severity_labels_annotations_and_links() -> None:
    group = _group(
        [
            {
                "name": "DiskFilling",
                "severity": "critical",
                "summary": "/var on db-1 is 92% full",
                "description": "Predicted full within 4 hours.",
                "labels": {"instance": "db-1"},
                "startsAt": "2026-11-23T08:01:00Z",
                "links": {"runbook": "https://runbooks.contoso.test/disk"},
            }
        ]
    )
    mail = render_group(group, now=datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    assert "/var on db-1 is 92% full" in mail.html and "Predicted full within 4 hours." in mail.html
    assert "instance=db-1" in mail.html and "since 2026-11-23 08:01 UTC" in mail.html
    assert 'href="https://runbooks.contoso.test/disk"' in mail.html
    assert "#b3261e" in mail.html  # the critical colour, inline
    assert not hasattr(mail, "text")  # one body: Graph's sendMail sends the HTML alone


def test_html_in_labels_and_annotations_is_escaped_and_headers_cannot_be_injected() -> None:
    group = _group(
        [
            {
                "name": "Evil\r\nBcc: attacker@evil.test",
                "summary": "<script>alert(1)</script>",
                "description": '<img src=x onerror="alert(2)">',
                "labels": {"team": "<b>ops</b> & co"},
            }
        ]
    )
    mail = render_group(group)
    assert "\n" not in mail.subject and "\r" not in mail.subject
    parser = _Tags()
    parser.feed(mail.html)
    assert "script" not in parser.tags and "img" not in parser.tags and "b" not in parser.tags
    assert "onerror" not in parser.attributes
    assert "&lt;script&gt;" in mail.html and "&amp; co" in mail.html


def test_above_the_display_cap_the_rest_are_counted_most_severe_first() -> None:
    alerts = [
        {"name": "Storm", "severity": "info", "summary": f"info {n}", "labels": {"n": str(n)}}
        for n in range(DISPLAY_CAP + 20)
    ]
    alerts.append({"name": "Storm", "severity": "critical", "summary": "the critical one", "labels": {"n": "x"}})
    mail = render_group(_group(alerts))
    assert f"Firing ({DISPLAY_CAP + 21})" in mail.html
    assert "and 21 more firing" in mail.html
    assert mail.html.index("the critical one") < mail.html.index("info 0")


def test_resolved_alerts_have_their_own_section() -> None:
    mail = render_group(
        _group(
            [
                {"name": "Latency", "summary": "p99 high"},
                {"name": "Latency", "status": "resolved", "summary": "p99 back to normal", "labels": {"x": "1"}},
            ]
        )
    )
    assert "Firing (1)" in mail.html and "Resolved (1)" in mail.html
    assert mail.html.index("p99 high") < mail.html.index("p99 back to normal")


def test_the_label_line_separates_labels_without_a_dangling_separator() -> None:
    group = _group([{"name": "DiskFilling", "severity": "critical", "labels": {"instance": "db-1", "zone": "b"}}])
    html = render_group(group).html
    assert "instance=db-1 &middot; zone=b" in html
    assert re.search(r"zone=b\s*&middot;", html) is None


def test_issue11_2_the_list_is_capped_by_size_as_well_as_count() -> None:
    wide = {f"l{n:02d}": "v" * 490 for n in range(16)}  # 8 K of labels, each value shown whole
    alerts = [
        {"name": "Wide", "severity": "critical", "summary": f"wide {n}", "description": "d" * 3000, "labels": wide}
        for n in range(DISPLAY_CAP)
    ]
    mail = render_group(_group([{"alerts": alerts}]))
    assert len(mail.html) <= MAIL_BUDGET
    assert f"Firing ({DISPLAY_CAP})" in mail.html
    shown = mail.html.count("d" * 1999 + "\u2026")  # each description cut to 2,000 characters
    assert 0 < shown < DISPLAY_CAP
    assert f"and {DISPLAY_CAP - shown} more firing" in mail.html


def test_issue12_7_alert_mails_have_one_html_body_and_each_kind_one_template() -> None:
    from shared.templating import TEMPLATES

    mail = render_group(_group([{"name": "DiskFilling"}]))
    assert not hasattr(mail, "text") and mail.html.startswith("<!DOCTYPE html>")
    kinds = sorted(p.name for p in TEMPLATES.glob("*.j2") if not p.name.startswith("_"))  # _layout: their frame
    assert kinds == [
        "alert_default.html.j2",
        "alert_summary.html.j2",
        "digest_alerts.html.j2",
        "digest_mailbox.html.j2",
    ]


def test_issue12_7_the_resolved_notice_names_each_alerts_instance() -> None:
    group = _group(
        [
            {"name": "DiskFull", "status": "resolved", "summary": "Disk full", "labels": {"instance": "db-1"}},
            {"name": "DiskFull", "status": "resolved", "summary": "Disk full", "labels": {"instance": "db-2"}},
        ]
    )
    html = render_group(group).html
    for instance in ("db-1", "db-2"):
        assert re.search(rf"Disk full <span[^>]*>&mdash; {instance}</span>", html), instance


def test_issue12_7_grafana_values_and_value_string_appear_in_the_mail() -> None:
    body = json.loads((FIXTURES / "grafana.json").read_text())
    html = render_group(_group([body])).html
    assert "values:</span> A=912.5, B=1" in html
    body["alerts"][0]["valueString"] = "[ var='A' labels={} value=912.5 ]"
    html = render_group(_group([body])).html
    assert "[ var=&#39;A&#39; labels={} value=912.5 ]" in html


def test_issue12_7_an_alertmanager_alert_gets_a_silence_link_to_its_alertmanager() -> None:
    body = json.loads((FIXTURES / "alertmanager.json").read_text())
    firing = parse_alerts(body)[0]
    assert firing.links["silence"] == (
        "http://alertmanager.contoso.test:9093/#/silences/new?filter="
        + quote('{alertname="DiskFilling",instance="db-1:9100",mountpoint="/var",severity="critical"}', safe="")
    )
    assert f'href="{firing.links["silence"]}"' in render_group(_group([body])).html


def test_issue12_7_azure_monitor_custom_property_urls_are_links_not_labels() -> None:
    body = json.loads((FIXTURES / "azuremonitor_metric.json").read_text())
    body["data"]["customProperties"] = {"team": "web", "Runbook": "https://runbooks.contoso.test/cpu"}
    [alert] = parse_alerts(body)
    assert alert.links["Runbook"] == "https://runbooks.contoso.test/cpu" and "Runbook" not in alert.labels
    assert alert.labels["team"] == "web"
    html = render_group(_group([body])).html
    assert '<a href="https://runbooks.contoso.test/cpu" style="color:#2b6cb0;">Runbook</a>' in html
