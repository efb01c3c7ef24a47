"""Intake: each source's documented payload shape maps to the expected Alerts; bad payloads get 400."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.alerts import detect_source, parse_alerts
from shared.alerts.intake import (
    CUT,
    MAX_ALERTS,
    MAX_ANNOTATION,
    MAX_ANNOTATIONS_TOTAL,
    MAX_LABEL,
    MAX_LABELS,
    MAX_LABELS_TOTAL,
    MAX_LINKS,
    MAX_STORED,
)
from shared.api import status_of
from shared.errors import AppError

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_alertmanager_webhook_v4() -> None:
    body = _fixture("alertmanager")
    assert detect_source(body) == "alertmanager"
    firing, resolved = parse_alerts(body)
    assert firing.name == "DiskFilling" and firing.status == "firing" and firing.severity == "critical"
    assert firing.labels["instance"] == "db-1:9100"
    assert firing.annotations["summary"] == "/var on db-1 is 92% full"
    assert firing.links["runbook"] == "https://runbooks.contoso.test/disk"  # from the common annotations
    assert firing.links["source"].startswith("http://prometheus.contoso.test")
    assert firing.starts_at == datetime(2026, 11, 23, 8, 1, 30, 123000, tzinfo=UTC)
    assert firing.ends_at is None
    assert firing.fingerprint == "1a2b3c4d5e6f7081"
    assert resolved.status == "resolved" and resolved.ends_at == datetime(2026, 11, 23, 8, 5, tzinfo=UTC)


def test_grafana_unified_alerting_webhook() -> None:
    body = _fixture("grafana")
    assert detect_source(body) == "grafana"
    [alert] = parse_alerts(body)
    assert alert.source == "grafana" and alert.severity == "warning"
    assert alert.links == {
        "source": "https://grafana.contoso.test/alerting/grafana/abc123/view",
        "silence": "https://grafana.contoso.test/alerting/silence/new?matcher=alertname%3DHigh+latency",
        "dashboard": "https://grafana.contoso.test/d/checkout",
        "panel": "https://grafana.contoso.test/d/checkout?viewPanel=4",
        "runbook": "https://runbooks.contoso.test/latency",
    }
    assert alert.annotations["values"] == "A=912.5, B=1"
    assert alert.starts_at is not None and alert.starts_at.utcoffset() is not None


def test_azure_monitor_metric_alert() -> None:
    body = _fixture("azuremonitor_metric")
    assert detect_source(body) == "azuremonitor"
    [alert] = parse_alerts(body)
    assert alert.name == "vm-cpu-high" and alert.severity == "high" and alert.status == "firing"
    assert alert.labels["azure_severity"] == "Sev1"
    assert alert.labels["target"] == "web-3" and alert.labels["team"] == "web"
    assert alert.annotations["summary"] == "Percentage CPU GreaterThan 90 (value 97.3)"
    assert alert.links["source"].startswith("https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/")
    assert alert.starts_at == datetime(2026, 11, 23, 10, 2, 11, 456789, tzinfo=UTC)


def test_azure_monitor_log_search_alert() -> None:
    [alert] = parse_alerts(_fixture("azuremonitor_log"))
    assert alert.severity == "warning"
    assert alert.annotations["query"].startswith("SigninLogs")
    assert "returned 58" in alert.annotations["summary"]
    assert alert.links["dashboard"] == "https://portal.azure.com#@contoso/blade/logs/q1"


def test_azure_monitor_activity_log_alert() -> None:
    [alert] = parse_alerts(_fixture("azuremonitor_activitylog"))
    assert alert.severity == "info"
    assert alert.annotations["summary"] == "Microsoft.Compute/virtualMachines/delete: Succeeded by ops@contoso.test"


def test_azure_monitor_resolved_alert() -> None:
    body = _fixture("azuremonitor_metric")
    body["data"]["essentials"].update(monitorCondition="Resolved", resolvedDateTime="2026-11-23T10:20:00Z")
    [alert] = parse_alerts(body)
    assert alert.status == "resolved" and alert.ends_at == datetime(2026, 11, 23, 10, 20, tzinfo=UTC)


def test_generic_alerts_single_list_and_wrapped() -> None:
    single = {
        "name": "BackupFailed",
        "severity": "P1",
        "summary": "Nightly backup failed",
        "labels": {"db": "crm"},
        "links": {"runbook": "https://runbooks.contoso.test/backup", "bad": "javascript:alert(1)"},
    }
    [alert] = parse_alerts(single)
    assert detect_source(single) == "generic"
    assert alert.severity == "critical" and alert.labels == {
        "db": "crm",
        "alertname": "BackupFailed",
        "severity": "critical",
    }
    assert alert.links == {"runbook": "https://runbooks.contoso.test/backup"}  # no script URLs
    assert len(parse_alerts([single, {**single, "name": "Other"}])) == 2
    assert len(parse_alerts({"alerts": [single]})) == 1
    assert alert.fingerprint == parse_alerts(single)[0].fingerprint  # stable without one given


def test_long_annotations_are_cut_not_refused() -> None:
    [alert] = parse_alerts({"name": "Noisy", "description": "x" * (MAX_ANNOTATION + 10)})
    assert len(alert.annotations["description"]) == MAX_ANNOTATION


@pytest.mark.parametrize(
    ("body", "source", "field"),
    [
        ({"hello": "world"}, None, "body"),
        ([1, 2], None, "body"),
        ({"version": "4", "groupKey": "k", "alerts": "nope"}, None, "alerts"),
        ({"version": "4", "groupKey": "k", "alerts": [{"labels": {}}]}, None, "alerts[0].labels.alertname"),
        (
            {"version": "4", "groupKey": "k", "alerts": [{"labels": {"alertname": "A", "x": ["list"]}}]},
            None,
            "alerts[0].labels.x",
        ),
        (
            {"version": "4", "groupKey": "k", "alerts": [{"status": "weird", "labels": {"alertname": "A"}}]},
            None,
            "alerts[0].status",
        ),
        (
            {
                "version": "4",
                "groupKey": "k",
                "alerts": [{"status": "firing", "labels": {"alertname": "A"}, "startsAt": "yesterday"}],
            },
            None,
            "alerts[0].startsAt",
        ),
        ({"version": "3", "alerts": []}, "alertmanager", "version"),
        ({"schemaId": "other"}, "azuremonitor", "schemaId"),
        ({"schemaId": "azureMonitorCommonAlertSchema", "data": {}}, None, "data.essentials"),
        (
            {
                "schemaId": "azureMonitorCommonAlertSchema",
                "data": {"essentials": {"alertRule": "r", "monitorCondition": "Maybe"}},
            },
            None,
            "data.essentials.monitorCondition",
        ),
        ({"name": ""}, "generic", "alert.name"),
        ({"alerts": [{"name": "a"}, "b"]}, "generic", "alerts[1]"),
    ],
)
def test_malformed_payloads_are_refused_with_the_place_named(body: Any, source: str | None, field: str) -> None:
    with pytest.raises(AppError) as raised:
        parse_alerts(body, source)
    assert status_of(raised.value) == 400
    assert raised.value.details[0].field == field


def test_too_many_alerts_and_unknown_sources_are_refused() -> None:
    with pytest.raises(AppError, match="at most"):
        parse_alerts([{"name": "a"}] * (MAX_ALERTS + 1))
    with pytest.raises(AppError) as raised:
        parse_alerts({"name": "a"}, "nagios")
    assert status_of(raised.value) == 404


def _am(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "groupKey": "k", "status": "firing", "alerts": list(alerts)}


@pytest.mark.parametrize(
    ("labels", "field", "reason"),
    [
        ({f"l{n}": "v" for n in range(MAX_LABELS + 1)}, "alerts[0].labels", f"at most {MAX_LABELS}"),
        ({"big": "x" * (MAX_LABEL + 1)}, "alerts[0].labels.big", f"longer than {MAX_LABEL}"),
        ({f"l{n}": "x" * 1000 for n in range(40)}, "alerts[0].labels", f"at most {MAX_LABELS_TOTAL}"),
        ({"n" * 300: "v"}, "alerts[0].labels.", "names are at most"),
    ],
)
def test_issue11_2_labels_beyond_their_bounds_are_refused_naming_the_field(
    labels: dict[str, str], field: str, reason: str
) -> None:
    with pytest.raises(AppError) as raised:
        parse_alerts(_am({"labels": {"alertname": "A", **labels}}))
    assert status_of(raised.value) == 400
    assert raised.value.details[0].field.startswith(field) and reason in raised.value.details[0].message


def test_issue11_2_too_many_annotations_or_links_or_a_long_fingerprint_are_refused() -> None:
    cases = [
        (
            _am({"labels": {"alertname": "A"}, "annotations": {f"a{n}": "v" for n in range(65)}}),
            "alerts[0].annotations",
        ),
        ({"name": "A", "links": {f"l{n}": "https://x.test" for n in range(MAX_LINKS + 1)}}, "alert.links"),
        ({"name": "A", "fingerprint": "f" * 129}, "alert.fingerprint"),
    ]
    for body, field in cases:
        with pytest.raises(AppError) as raised:
            parse_alerts(body)
        assert raised.value.details[0].field == field


def test_issue11_2_long_texts_are_cut_with_a_marker_until_the_stored_alert_fits() -> None:
    [alert] = parse_alerts({"name": "Huge", "summary": "s" * 16_000, "description": "d" * 16_000})
    summary, description = alert.annotations["summary"], alert.annotations["description"]
    assert summary.endswith(CUT) and description.endswith(CUT)
    assert len(summary) + len(description) <= MAX_ANNOTATIONS_TOTAL
    assert len(json.dumps(alert.as_dict(), separators=(",", ":"))) <= MAX_STORED


def test_issue11_2_non_ascii_texts_are_cut_to_fit_as_stored_too() -> None:
    annotations = {f"note{n}": "\u00e9\u4e2d" * 2000 for n in range(10)}  # six characters each once escaped
    [alert] = parse_alerts(_am({"labels": {"alertname": "A"}, "annotations": annotations}))
    assert len(json.dumps(alert.as_dict(), separators=(",", ":"))) <= MAX_STORED
    assert alert.annotations  # shortened, not all dropped


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "A", "sevrity": "critical"}, "alert.sevrity"),
        ([{"name": "A"}, {"name": "B", "title": "x"}], "alerts[1].title"),
        ({"alerts": [{"name": "A"}], "receiver": "x"}, "body.receiver"),
    ],
)
def test_issue12_6_the_generic_format_refuses_unknown_fields(body: Any, field: str) -> None:
    with pytest.raises(AppError) as raised:
        parse_alerts(body, "generic")
    assert status_of(raised.value) == 400
    assert raised.value.details[0].field == field and "unknown field" in raised.value.details[0].message


def test_issue12_6_generic_links_may_be_a_list_of_title_and_url() -> None:
    links = [
        {"title": "Runbook", "url": "https://runbooks.contoso.test/backup"},
        {"title": "Grafana board", "url": "https://grafana.contoso.test/d/backup"},
        {"title": "script", "url": "javascript:alert(1)"},
    ]
    [alert] = parse_alerts({"name": "BackupFailed", "links": links})
    assert alert.links == {
        "Runbook": "https://runbooks.contoso.test/backup",
        "Grafana board": "https://grafana.contoso.test/d/backup",
    }
    [mapped] = parse_alerts({"name": "BackupFailed", "links": {"Runbook": "https://runbooks.contoso.test/backup"}})
    assert mapped.links == {"Runbook": "https://runbooks.contoso.test/backup"}


@pytest.mark.parametrize(
    ("links", "field"),
    [
        (["https://x.test"], "alert.links[0]"),
        ([{"title": "a", "url": "https://x.test", "icon": "x"}], "alert.links[0].icon"),
        ([{"url": "https://x.test"}], "alert.links[0].title"),
        ([{"title": "a", "url": 5}], "alert.links[0].url"),
        ([{"title": "a", "url": "https://x.test"}, {"title": "a", "url": "https://y.test"}], "alert.links[1].title"),
    ],
)
def test_issue12_6_malformed_link_lists_are_refused_naming_the_entry(links: Any, field: str) -> None:
    with pytest.raises(AppError) as raised:
        parse_alerts({"name": "A", "links": links})
    assert raised.value.details[0].field == field


def test_azure_monitors_portal_and_search_links_are_held_to_the_link_rules_like_any_other() -> None:
    """A 17,000-character search link must not make the whole alert too big to store (issue 11, item 2)."""
    body = _fixture("azuremonitor_log")
    text = json.dumps(body).replace("https://portal.azure.com#@contoso/blade/logs/q1", "https://x.test/" + "q" * 17000)
    [alert] = parse_alerts(json.loads(text))
    assert "dashboard" not in alert.links
    assert alert.links["source"].startswith("https://portal.azure.com/")


@pytest.mark.parametrize(
    ("word", "severity"),
    [
        ("page", "critical"),
        ("URGENT", "critical"),
        ("crit", "critical"),
        ("p1", "critical"),
        ("P2", "high"),
        ("error", "high"),
        ("p3", "warning"),
        ("warn", "warning"),
        ("p4", "info"),
        ("info", "info"),
        (None, "warning"),  # none given: the documented default
    ],
)
def test_common_severity_words_map_as_the_readme_table_says(word: str | None, severity: str) -> None:
    [alert] = parse_alerts({"name": "X", **({"severity": word} if word else {})})
    assert alert.severity == severity == alert.labels["severity"]


@pytest.mark.parametrize(
    ("body", "source", "field"),
    [
        ({"name": "X", "severity": "sometimes"}, None, "alert.severity"),
        ({"name": "X", "labels": {"severity": "sometimes"}}, None, "alert.labels.severity"),
        (
            {
                "version": "4",
                "groupKey": "g",
                "status": "firing",
                "alerts": [{"labels": {"alertname": "A", "severity": "sometimes"}}],
            },
            "alertmanager",
            "alerts[0].labels.severity",
        ),
        (
            {
                "schemaId": "azureMonitorCommonAlertSchema",
                "data": {"essentials": {"alertRule": "r", "severity": "Sev9", "monitorCondition": "Fired"}},
            },
            None,
            "data.essentials.severity",
        ),
    ],
)
def test_an_unknown_severity_word_is_refused_listing_the_known_ones_never_guessed(
    body: Any, source: str | None, field: str
) -> None:
    with pytest.raises(AppError) as raised:
        parse_alerts(body, source)
    assert status_of(raised.value) == 400
    [detail] = raised.value.details
    assert detail.field == field
    assert "is not a known severity: use critical, high, warning, info or one of" in detail.message
    assert "page" in detail.message and "p1" in detail.message and "severity_map" in detail.message


def test_the_routing_files_severity_map_adds_words_and_overrides_the_built_in_ones() -> None:
    mapping = {"blocker": "critical", "p3": "info"}
    assert parse_alerts({"name": "X", "severity": "Blocker"}, severity_map=mapping)[0].severity == "critical"
    assert parse_alerts({"name": "X", "severity": "P3"}, severity_map=mapping)[0].severity == "info"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"severity": "critical", "summary": "disk full"}, "alert.name", "is required"),
        ([{"severity": "critical"}], "alerts[0].name", "is required"),
        ({"data": {}}, "schemaId", None),
        ({"hello": "world"}, "body", "unknown alert format: none of the formats' fields"),
    ],
)
def test_auto_detection_names_what_the_closest_format_lacks(body: Any, field: str, message: str | None) -> None:
    with pytest.raises(AppError) as raised:
        parse_alerts(body)
    assert raised.value.details[0].field == field
    if message is not None:
        assert raised.value.details[0].message == message
