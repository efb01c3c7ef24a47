"""The per-receiver mail cap (issue 11 item 4): one request with many alert names cannot become many mails;
the group notices beyond the cap go out as one summary mail listing their groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.alerts.dispatch import Flush
from shared.alerts.grouping import receiver_key
from shared.alerts.model import stamp
from shared.config import settings
from shared.routing_file import notify_config
from shared.store import store

from ..helpers import dispatch_with, drain_queue, http, live_flush, run, user_function
from .conftest import ROUTING


def _post(app: Any, body: Any) -> dict[str, Any]:
    response = run(user_function(app.post_alerts)(http("POST", "/api/alerts", body)))
    assert response.status_code == 202, response.get_body()
    answer: dict[str, Any] = json.loads(response.get_body())
    return answer


async def _flush_all(keys: list[str]) -> list[str]:
    """Run each group's live flush, then the receiver's summary if one is pending; the outcomes."""
    config = settings()
    target = store(config.storage)
    outcomes = []
    for key in keys:
        message = await live_flush(target, key)
        assert message is not None
        outcomes.append((await dispatch_with(target).flush(message)).outcome)
    cap = await target.caps.get(receiver_key("oncall"))
    if cap is not None and cap.summary_due is not None:
        summary = json.dumps({"summary": "oncall", "due": stamp(cap.summary_due)})
        done: Flush = await dispatch_with(target).flush(summary)
        outcomes.append(f"summary {done.outcome} {done.alerts}")
    return outcomes


def _deliver(app: Any, azurite: AzuriteProcess) -> None:
    run(drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox))


def test_issue11_4_one_request_with_25_alert_names_gives_20_mails_and_one_summary_of_the_other_5(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    answer = _post(alerts_app, [{"name": f"Alert{n:02d}", "severity": "critical"} for n in range(25)])
    keys = [g["key"] for g in answer["groups"]]
    outcomes = run(_flush_all(keys))
    assert outcomes.count("notified") == 20 and outcomes.count("held_back") == 5  # the default cap is 20
    assert outcomes[-1] == "summary notified 5"
    _deliver(alerts_app, azurite)
    sent = sandbox.sent()
    assert len(sent) == 21
    [summary] = [m for m in sent if m["subject"].startswith("[SUMMARY]")]
    assert summary["subject"] == "[SUMMARY] 5 more alert group notices for oncall (over 20 per 5m)"
    held = [s for s in (f"[FIRING:1] Alert{n:02d}" for n in range(25)) if s not in {m["subject"] for m in sent}]
    assert len(held) == 5 and all(subject in summary["body"]["content"] for subject in held)


CAPPED = ROUTING.replace("    repeat_interval: 10m\n", "    repeat_interval: 10m\n    max_groups_per_interval: 2\n")


def test_issue11_4_the_cap_is_configurable_and_holds_back_a_storm_of_resolutions_too(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing = tmp_path / "capped.yaml"
    routing.write_text(CAPPED)
    monkeypatch.setenv("NOTIFY_CONFIG", str(routing))
    notify_config.cache_clear()
    firing = _post(alerts_app, [{"name": f"Alert{n}", "severity": "critical"} for n in range(6)])
    keys = [g["key"] for g in firing["groups"]]
    assert run(_flush_all(keys)) == ["notified"] * 2 + ["held_back"] * 4 + ["summary notified 4"]
    _post(alerts_app, [{"name": f"Alert{n}", "severity": "critical", "status": "resolved"} for n in range(6)])
    second = run(_flush_all(keys))
    assert second.count("notified") <= 2 and second[-1].startswith("summary notified")
    _deliver(alerts_app, azurite)
    subjects = [m["subject"] for m in sandbox.sent()]
    assert len(subjects) <= 2 + 1 + 2 + 1  # never one mail per group
    assert sum(s.startswith("[RESOLVED") for s in subjects) == second.count("notified")


def test_a_flood_through_one_source_does_not_hold_back_another_sources_alert(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    """Review of issue 11, items 1 and 4: the cap counts per source, so 20 generic alerts (anyone with the
    function key) cannot turn a signed Grafana notification into a line of a summary mail."""
    from .test_webhook import _grafana_headers, fixture

    flood = _post(alerts_app, [{"name": f"Flood{n:02d}", "severity": "critical"} for n in range(20)])
    outcomes = run(_flush_all([g["key"] for g in flood["groups"]]))
    assert outcomes.count("notified") == 20  # the generic source's cap for this window is used up
    payload = fixture("grafana")
    for item in payload["alerts"]:
        item["labels"]["severity"] = "critical"  # routed to oncall, whose generic cap is used up
    body = json.dumps(payload).encode()
    response = run(
        user_function(alerts_app.post_alerts)(
            http("POST", "/api/alerts/grafana", raw=body, route={"source": "grafana"}, headers=_grafana_headers(body))
        )
    )
    answer = json.loads(response.get_body())
    assert response.status_code == 202, answer
    assert [g.get("mail", "").startswith("app:alert-") for g in answer["groups"] if g["receiver"] == "oncall"] == [True]
