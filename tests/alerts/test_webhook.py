"""`POST /api/alerts[/{source}]` and the `alerts-inbox` queue: what callers see, what is stored, what is refused.

Source authentication runs against secrets in the sandbox's Key Vault, read through the managed identity."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.alerts import auth
from shared.store import Store
from shared.store.alert_queues import AlertQueues

from ..helpers import dispatch_with, drain_queue, http, live_flush, run, user_function
from .conftest import AZURE_MONITOR_TOKEN, GRAFANA_SECRET

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


def fresh(name: str) -> dict[str, Any]:
    """A fixture as a new notification (its own groupKey): the same notification again within a couple of
    minutes is taken for the source's retry, and earlier tests may have sent this one."""
    body = fixture(name)
    body["groupKey"] = f"{body['groupKey']}/{uuid.uuid4().hex}"
    return body


def _post(app: Any, body: Any = None, source: str | None = None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    route = {"source": source} if source else {}
    url = f"/api/alerts/{source}" if source else "/api/alerts"
    response = run(user_function(app.post_alerts)(http("POST", url, body, route=route, **kwargs)))
    return response.status_code, json.loads(response.get_body())


def _stored(azurite: AzuriteProcess) -> int:
    """Alert rows and group rows in Table storage, and flush messages queued."""
    with TableServiceClient.from_connection_string(azurite.connection_string) as tables:
        names = {t.name for t in tables.list_tables()}
        rows = sum(
            len(list(tables.get_table_client(name).list_entities()))
            for name in ("alertgroups", "alertdigest")
            if name in names
        )
    queue = QueueClient.from_connection_string(azurite.connection_string, "alerts-flush")
    messages = queue.get_queue_properties().approximate_message_count
    queue.close()
    return rows + messages


def _grafana_headers(body: bytes, secret: str = GRAFANA_SECRET, stamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if stamp is None else stamp
    signature = hmac.new(secret.encode(), f"{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Grafana-Alerting-Signature": signature, "X-Grafana-Alerting-Timestamp": str(stamp)}


def test_issue12_5_an_alertmanager_notification_is_one_mail_at_once_its_status_deciding_firing(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    status, answer = _post(alerts_app, fresh("alertmanager"))
    assert status == 202
    assert answer["accepted"] == 2
    [group] = answer["groups"]
    assert (group["receiver"], group["mode"], group["grouping"], group["labels"], group["alerts"]) == (
        "oncall",
        "immediate",
        "source",
        {"alertname": "DiskFilling"},
        2,
    )
    assert group["mail"].startswith("app:alert-")
    assert _stored(azurite) == 1  # no group state, no flush: only the receiver's mail-cap count
    run(drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox))
    [mail] = sandbox.sent()
    assert mail["subject"] == "[FIRING:1] DiskFilling (critical)"
    assert "/var on db-1 is 92% full" in mail["body"]["content"]  # firing
    assert "/var on db-2 is 71% full" in mail["body"]["content"]  # and resolved, in the same notification


def test_issue12_5_a_resolved_notification_is_mailed_as_resolved_and_a_retry_is_not_mailed_twice(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    body = fresh("alertmanager")
    body["status"] = "resolved"
    body["alerts"][0].update(status="resolved", endsAt="2026-11-23T08:30:00Z")
    first = _post(alerts_app, body)
    retry = _post(alerts_app, body)  # Alertmanager retries when it misses the answer
    assert first[0] == retry[0] == 202 and first[1]["groups"][0]["mail"] == retry[1]["groups"][0]["mail"]
    run(drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox))
    assert [m["subject"] for m in sandbox.sent()] == ["[RESOLVED] DiskFilling (critical)"]


def test_issue12_5_a_receiver_can_opt_back_into_the_apps_own_grouping(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _regrouping(tmp_path, monkeypatch)
    status, answer = _post(alerts_app, fixture("alertmanager"))
    assert status == 202
    [group] = answer["groups"]
    assert group["grouping"] == "app" and "mail" not in group
    assert _stored(azurite) == 4  # two alert rows, the group row, one pending flush (after group_wait)
    run(drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox))
    assert sandbox.sent() == []


def test_a_named_source_is_parsed_as_that_source_and_an_unknown_one_is_404(alerts_app: Any) -> None:
    status, answer = _post(alerts_app, fixture("alertmanager"), source="alertmanager")
    assert status == 202 and answer["accepted"] == 2
    status, answer = _post(alerts_app, fixture("alertmanager"), source="nagios")
    assert status == 404 and answer["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"hello": "world"}', "body"),
        (b'{"version": "4", "groupKey": ', "body"),
        (b'{"version": "4", "groupKey": "x", "alerts": "not a list"}', "alerts"),
        (b'{"version": "4", "groupKey": "x", "alerts": [{"labels": {"alertname": ["a"]}}]}', "labels.alertname"),
        (b"[1, 2, 3]", "body"),
    ],
)
def test_malformed_alert_payloads_get_400_naming_the_place_and_nothing_is_stored(
    alerts_app: Any, azurite: AzuriteProcess, raw: bytes, field: str
) -> None:
    status, answer = _post(alerts_app, raw=raw)
    assert status == 400
    assert any(field in d["field"] for d in answer["error"]["details"]), answer
    assert _stored(azurite) == 0


def test_a_5_mb_payload_gets_413_and_a_wrong_media_type_415(alerts_app: Any, azurite: AzuriteProcess) -> None:
    big = {"alerts": [{"name": "Big", "description": "x" * 1000}] * 5243}  # 5 MB of JSON
    status, answer = _post(alerts_app, big)
    assert status == 413 and answer["error"]["code"] == "payload_too_large"
    status, answer = _post(alerts_app, raw=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    assert _stored(azurite) == 0


def test_a_dry_run_answers_the_mails_and_stores_nothing(alerts_app: Any, azurite: AzuriteProcess) -> None:
    status, answer = _post(alerts_app, fixture("alertmanager"), params={"dryRun": "true"})
    assert status == 200 and answer["dryRun"] is True and answer["accepted"] == 2
    [mail] = answer["mails"]
    assert mail["subject"] == "[FIRING:1] DiskFilling (critical)"
    assert mail["to"] == ["alice@contoso.test"] and mail["from"] == "notifications@contoso.test"
    assert "/var on db-1 is 92% full" in mail["html"] and "text" not in mail  # one body, the HTML
    assert _stored(azurite) == 0


def test_grafana_with_a_valid_signature_and_fresh_timestamp_is_accepted(alerts_app: Any) -> None:
    body = json.dumps(fixture("grafana")).encode()
    status, answer = _post(alerts_app, raw=body, headers=_grafana_headers(body))
    assert status == 202, answer
    assert answer["accepted"] == len(fixture("grafana")["alerts"])


@pytest.mark.parametrize(
    "case", ["no signature", "wrong secret", "body changed", "stale timestamp", "no timestamp", "future timestamp"]
)
def test_grafana_with_a_bad_signature_or_timestamp_gets_401_and_nothing_is_stored(
    alerts_app: Any, azurite: AzuriteProcess, case: str
) -> None:
    body = json.dumps(fixture("grafana")).encode()
    headers = {
        "no signature": {},
        "wrong secret": _grafana_headers(body, secret="guess"),
        "body changed": _grafana_headers(body + b" "),
        "stale timestamp": _grafana_headers(body, stamp=int(time.time()) - 301),
        "no timestamp": {"X-Grafana-Alerting-Signature": _grafana_headers(body)["X-Grafana-Alerting-Signature"]},
        "future timestamp": _grafana_headers(body, stamp=int(time.time()) + 400),
    }[case]
    status, answer = _post(alerts_app, raw=body, headers=headers, source="grafana")
    assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert GRAFANA_SECRET not in json.dumps(answer)
    assert _stored(azurite) == 0


def test_auto_detection_does_not_skip_a_sources_authentication(alerts_app: Any, azurite: AzuriteProcess) -> None:
    status, _ = _post(alerts_app, fixture("grafana"))  # detected as Grafana, so it needs Grafana's signature
    assert status == 401
    assert _stored(azurite) == 0


def test_azure_monitor_needs_its_bearer_token_and_a_rotated_one_is_picked_up(
    alerts_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = fixture("azuremonitor_metric")
    status, _ = _post(alerts_app, body, headers={"Authorization": "Bearer wrong"})
    assert status == 401 and _stored(azurite) == 0
    status, _ = _post(alerts_app, body, headers={"Authorization": f"Bearer {AZURE_MONITOR_TOKEN}"})
    assert status == 202

    sandbox.control.post("/_sandbox/keyvault/secrets/azuremonitor-webhook-token", json={"value": "rotated-token"})
    monkeypatch.setattr(auth, "REREAD_AFTER_SECONDS", 0)  # instead of waiting a minute
    status, _ = _post(alerts_app, body, headers={"Authorization": "Bearer rotated-token"})
    assert status == 202
    status, _ = _post(alerts_app, body, headers={"Authorization": f"Bearer {AZURE_MONITOR_TOKEN}"})
    assert status == 401


def test_sources_without_authentication_in_the_routing_file_need_only_the_function_key(alerts_app: Any) -> None:
    status, _ = _post(alerts_app, {"name": "BackupFailed", "severity": "high"}, source="generic")
    assert status == 202


def _inbox(alerts_app: Any, azurite: AzuriteProcess, messages: list[str]) -> None:
    producer = QueueClient.from_connection_string(
        azurite.connection_string, "alerts-inbox", message_encode_policy=TextBase64EncodePolicy()
    )
    for text in messages:
        producer.send_message(text)
    producer.close()
    run(drain_queue(azurite.connection_string, "alerts-inbox", alerts_app.alerts_inbox))


def test_the_alerts_inbox_takes_any_format_and_poisons_what_it_cannot_read(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    generic = {"name": "BackupFailed", "severity": "high"}
    messages = [json.dumps(fresh("alertmanager")), json.dumps(generic), "not json", json.dumps({"hello": 1})]
    _inbox(alerts_app, azurite, messages)
    with TableServiceClient.from_connection_string(azurite.connection_string) as tables:
        rows = [e for e in tables.get_table_client("alertgroups").list_entities() if e["RowKey"].startswith("a-")]
        audit = [e for e in tables.get_table_client("audit").list_entities() if e["operation"] == "alertIntake"]
    assert [json.loads(r["alert"])["name"] for r in rows] == ["BackupFailed"]  # grouped by the app
    run(drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox))
    assert [m["subject"] for m in sandbox.sent()] == ["[FIRING:1] DiskFilling (critical)"]  # passed through
    poison = QueueClient.from_connection_string(azurite.connection_string, "alerts-inbox-poison")
    assert poison.get_queue_properties().approximate_message_count == 2
    poison.close()
    reasons = [e["detail"] for e in audit]
    assert any(r.startswith("not JSON") for r in reasons)
    assert any(r.startswith("The payload is not an alert") for r in reasons)


def _grafana_critical() -> dict[str, Any]:
    body = fixture("grafana")
    body["alerts"][0]["labels"]["severity"] = "critical"  # routed to oncall, mailed
    return body


def test_issue11_1_a_grafana_payload_posted_as_generic_still_needs_grafanas_signature(
    alerts_app: Any, azurite: AzuriteProcess
) -> None:
    status, answer = _post(alerts_app, _grafana_critical(), source="generic")
    assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert _stored(azurite) == 0


def test_issue11_1_a_grafana_payload_reshaped_to_look_like_alertmanager_still_needs_grafanas_signature(
    alerts_app: Any, azurite: AzuriteProcess
) -> None:
    body = _grafana_critical()
    del body["orgId"]
    body["version"] = "4"
    for source in (None, "alertmanager"):
        status, answer = _post(alerts_app, body, source=source)
        assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert _stored(azurite) == 0


def _regrouping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test routing file with `regroup: true` on oncall: the app groups every source's alerts."""
    from shared.routing_file import notify_config

    from .conftest import ROUTING

    regrouping = tmp_path / "regroup.yaml"
    regrouping.write_text(
        ROUTING.replace("    send_resolved: true\n", "    send_resolved: true\n    regroup: true\n", 1)
    )
    monkeypatch.setenv("NOTIFY_CONFIG", str(regrouping))
    notify_config.cache_clear()


def test_issue11_1_no_other_source_can_resolve_a_signed_grafana_alert(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.config import settings
    from shared.store import store

    _regrouping(tmp_path, monkeypatch)  # alert state is the app's to keep only when it groups

    signed = json.dumps(_grafana_critical()).encode()
    status, grafana = _post(alerts_app, raw=signed, headers=_grafana_headers(signed))
    assert status == 202
    forged = {
        "name": "High latency",
        "status": "resolved",
        "severity": "critical",
        "fingerprint": "0f9e8d7c6b5a4321",
        "labels": {"alertname": "High latency", "service": "checkout", "severity": "critical"},
    }
    status, generic = _post(alerts_app, forged, source="generic")
    assert status == 202
    stripped = {  # the same alert as Alertmanager would send it: no Grafana field left to recognise
        "version": "4",
        "groupKey": "x",
        "status": "resolved",
        "alerts": [{"status": "resolved", "labels": forged["labels"], "fingerprint": "0f9e8d7c6b5a4321"}],
    }
    status, alertmanager = _post(alerts_app, stripped)
    assert status == 202
    keys = {grafana["groups"][0]["key"], generic["groups"][0]["key"], alertmanager["groups"][0]["key"]}
    assert len(keys) == 3  # each source's alert lives in its own group

    async def flush_grafana() -> str:
        config = settings()
        key = grafana["groups"][0]["key"]
        message = await live_flush(store(config.storage), key)
        assert message is not None
        done = await dispatch_with(store(config.storage)).flush(message)
        await drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox)
        return done.outcome

    assert run(flush_grafana()) == "notified"
    assert [m["subject"] for m in sandbox.sent()] == ["[FIRING:1] High latency"]


def test_issue11_1_require_source_auth_refuses_every_source_without_authentication(
    alerts_app: Any, azurite: AzuriteProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.routing_file import notify_config

    from .conftest import ROUTING

    strict = tmp_path / "strict.yaml"
    strict.write_text(ROUTING + "require_source_auth: true\n")
    monkeypatch.setenv("NOTIFY_CONFIG", str(strict))
    notify_config.cache_clear()
    for body, source in [
        ({"name": "BackupFailed", "severity": "high"}, "generic"),
        ({"name": "BackupFailed", "severity": "high"}, None),
        (fixture("alertmanager"), None),
    ]:
        status, answer = _post(alerts_app, body, source=source)
        assert status == 403 and answer["error"]["code"] == "forbidden", answer
        assert "generic" in answer["error"]["message"] or "alertmanager" in answer["error"]["message"]
    assert _stored(azurite) == 0
    signed = json.dumps(_grafana_critical()).encode()
    status, _ = _post(alerts_app, raw=signed, headers=_grafana_headers(signed))
    assert status == 202  # an authenticated source still gets in


@pytest.mark.parametrize("stamp", ["\u00b2", "\u0663\u0661", "12 34", "-5", "9" * 40])
def test_issue11_10_a_timestamp_header_that_is_not_ascii_digits_gets_401_not_500(
    alerts_app: Any, azurite: AzuriteProcess, stamp: str
) -> None:
    body = json.dumps(fixture("grafana")).encode()
    headers = {**_grafana_headers(body), "X-Grafana-Alerting-Timestamp": stamp}
    status, answer = _post(alerts_app, raw=body, headers=headers, source="grafana")
    assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert _stored(azurite) == 0


def test_issue11_3_forty_labels_of_1000_characters_get_400_before_anything_is_written(
    alerts_app: Any, azurite: AzuriteProcess
) -> None:
    small = {"name": "Small", "severity": "critical"}
    big = {"name": "Big", "severity": "critical", "labels": {f"label{n}": "x" * 1000 for n in range(40)}}
    status, answer = _post(alerts_app, [small, big])
    assert status == 400 and answer["error"]["code"] == "invalid_request"
    assert answer["error"]["details"][0]["field"] == "alerts[1].labels"
    assert _stored(azurite) == 0  # not even the small alert's row


class _FailsOnSecondFlush(AlertQueues):
    """Storage fails when intake schedules its second group's flush: an intake that stops half-way."""

    flushes = 0

    async def send_flush(self, message: dict[str, Any], delay_seconds: float) -> None:
        type(self).flushes += 1
        if type(self).flushes == 2:
            raise ConnectionError("storage went away")
        await super().send_flush(message, delay_seconds)


def test_issue11_3_an_intake_that_fails_half_way_is_completed_by_a_retry_of_the_same_request(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    from datetime import UTC, datetime, timedelta

    from shared.alerts.intake import parse_alerts
    from shared.config import settings
    from shared.store import store

    payload = [{"name": "First", "severity": "critical"}, {"name": "Second", "severity": "critical"}]
    earlier = datetime.now(UTC) - timedelta(hours=1)

    async def scenario() -> list[str]:
        config = settings()
        failing = Store(config.storage)
        failing.alert_queues = _FailsOnSecondFlush(failing.storage)
        try:
            with pytest.raises(ConnectionError):
                await dispatch_with(failing).ingest(parse_alerts(payload), earlier)
        finally:
            await failing.close()
        target = store(config.storage)
        retried = await dispatch_with(target).ingest(parse_alerts(payload), earlier)  # the retry
        outcomes = []
        for receipt in retried.groups:
            message = await live_flush(target, receipt.key)
            assert message is not None, "every group has its flush pending"
            outcomes.append((await dispatch_with(target).flush(message)).outcome)
        await drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox)
        return outcomes

    assert run(scenario()) == ["notified", "notified"]
    assert sorted(m["subject"] for m in sandbox.sent()) == ["[FIRING:1] First", "[FIRING:1] Second"]


GRAFANA_DOCUMENTED_EXAMPLE = {  # Grafana's webhook notifier page: no severity label anywhere
    "receiver": "My Super Webhook",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
            "annotations": {"description": "The system has high memory usage", "summary": "zone us-1"},
            "startsAt": "2021-10-12T09:51:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "c6eadffa33fcdf37",
            "values": {"B": 44.23943737541908, "C": 1},
        }
    ],
    "groupLabels": {},
    "commonLabels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
    "commonAnnotations": {},
    "externalURL": "https://play.grafana.org/",
    "version": "1",
    "groupKey": '{}:{alertname="High memory usage"}',
    "truncatedAlerts": 0,
}


def test_issue12_6_the_answer_names_the_route_receiver_and_mode_an_alert_went_to(alerts_app: Any) -> None:
    body = json.dumps(GRAFANA_DOCUMENTED_EXAMPLE).encode()
    status, answer = _post(alerts_app, raw=body, headers=_grafana_headers(body))
    assert status == 202
    [group] = answer["groups"]
    assert (group["receiver"], group["mode"], group["grouping"]) == ("digest", "digest", "digest")
    assert group["routes"] == [{"path": "route", "matchers": []}]  # no child route matched: the root's receiver

    status, answer = _post(alerts_app, {"name": "BackupFailed", "severity": "high"})
    [group] = answer["groups"]
    assert (group["receiver"], group["mode"], group["grouping"]) == ("oncall", "immediate", "app")
    assert group["routes"] == [{"path": "route.routes[1]", "matchers": ['severity=~"critical|high"']}]


def test_a_pass_through_retry_across_the_edge_of_its_two_minute_window_is_the_same_mail(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    """Review of issue 12, item 5: a source retrying 30 s later may cross the window's edge; it is still a
    retry (the previous window's mail is found), mailed once, and takes no second slot of the mail cap."""
    from datetime import UTC, datetime

    from shared.alerts.grouping import group_alerts
    from shared.alerts.intake import parse_alerts
    from shared.alerts.notify import PASS_THROUGH_RETRY_WINDOW, Notifier
    from shared.config import settings
    from shared.routing_file import notify_config
    from shared.store import store

    config = settings()
    routing = notify_config(config)
    [group] = group_alerts(parse_alerts(fresh("alertmanager"), "alertmanager"), routing)
    edge = (int(datetime.now(UTC).timestamp()) // PASS_THROUGH_RETRY_WINDOW + 1) * PASS_THROUGH_RETRY_WINDOW

    async def twice() -> list[str | None]:
        notifier = Notifier(config, store(config.storage))
        receiver = routing.receiver(group.receiver)
        first = await notifier.pass_through(group, receiver, datetime.fromtimestamp(edge - 10, UTC))
        retry = await notifier.pass_through(group, receiver, datetime.fromtimestamp(edge + 20, UTC))
        return [first, retry]

    first, retry = run(twice())
    assert first is not None and retry == first
    run(drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox))
    assert len(sandbox.sent()) == 1


def _later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The app's clock `seconds` ahead, for the alert endpoint (signature check and intake)."""
    import types
    from datetime import datetime as real_datetime

    import shared.api

    class Later(real_datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return real_datetime.now(tz) + __import__("datetime").timedelta(seconds=seconds)

    monkeypatch.setattr(shared.api, "time", types.SimpleNamespace(time=lambda: time.time() + seconds))
    monkeypatch.setattr(shared.api, "datetime", Later)


def _signed_alertmanager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxProcess) -> None:
    """The test routing file with Alertmanager signing its requests by HMAC, without a timestamp."""
    from shared.routing_file import notify_config

    from .conftest import ROUTING

    signed = tmp_path / "signed.yaml"
    signed.write_text(
        ROUTING.replace(
            "sources:\n", "sources:\n  alertmanager:\n    hmac_secret: am-hmac\n    hmac_header: X-Signature\n"
        )
    )
    sandbox.control.post("/_sandbox/keyvault/secrets/am-hmac", json={"value": "am-hmac-value"})
    monkeypatch.setenv("NOTIFY_CONFIG", str(signed))
    notify_config.cache_clear()


@pytest.mark.parametrize("source", ["grafana", "alertmanager"])
def test_a_signed_request_replayed_250_s_later_is_answered_replayed_and_mails_nothing_more(
    alerts_app: Any,
    azurite: AzuriteProcess,
    sandbox: SandboxProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    if source == "grafana":
        payload = fresh("grafana")
        payload["alerts"][0]["labels"]["severity"] = "critical"  # mailed at once
        body = json.dumps(payload).encode()
        headers = _grafana_headers(body)
    else:
        _signed_alertmanager(tmp_path, monkeypatch, sandbox)
        body = json.dumps(fresh("alertmanager")).encode()
        headers = {"X-Signature": hmac.new(b"am-hmac-value", body, hashlib.sha256).hexdigest()}
    status, first = _post(alerts_app, raw=body, headers=headers, source=source)
    assert status == 202 and first["accepted"] > 0
    run(drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox))
    mailed = len(sandbox.sent())
    assert mailed >= 1

    _later(monkeypatch, 250)  # past the pass-through's retry windows, within Grafana's 5-minute window
    status, replay = _post(alerts_app, raw=body, headers=headers, source=source)
    assert status == 202 and replay == {"accepted": 0, "groups": [], "replayed": True}
    run(drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox))
    assert len(sandbox.sent()) == mailed


def _a_failed_signed_request_and_its_retry_mail_once(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    """A signed critical Grafana request fails (5xx, the test's fault once); its byte-identical retry is accepted
    as no replay, and its alert is mailed once."""
    payload = fresh("grafana")
    payload["alerts"][0]["labels"]["severity"] = "critical"
    body = json.dumps(payload).encode()
    headers = _grafana_headers(body)
    status, _ = _post(alerts_app, raw=body, headers=headers, source="grafana")
    assert status >= 500
    status, retry = _post(alerts_app, raw=body, headers=headers, source="grafana")
    assert status == 202 and retry["accepted"] == 1 and "replayed" not in retry
    run(drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox))
    assert len(sandbox.sent()) == 1


def test_a_signed_request_whose_intake_failed_is_forgotten_so_the_senders_retry_is_accepted(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.alerts.dispatch import Dispatcher

    ingest = Dispatcher.ingest

    async def storage_went_away(self: Any, *args: Any) -> Any:
        monkeypatch.setattr(Dispatcher, "ingest", ingest)  # once
        raise ConnectionError("storage went away")

    monkeypatch.setattr(Dispatcher, "ingest", storage_went_away)
    _a_failed_signed_request_and_its_retry_mail_once(alerts_app, azurite, sandbox)


def test_a_signed_request_whose_replay_check_failed_after_noting_it_is_forgotten_so_the_retry_is_accepted(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signature was written, then Storage failed (the previous bucket's read, the clean-up): the request
    fails with nothing accepted, and the sender's retry is no replay, or its alert would be lost."""
    from shared.store.alert_replays import AlertReplays

    first_sight = AlertReplays.first_sight

    async def noted_then_storage_went_away(self: Any, *args: Any) -> bool:
        monkeypatch.setattr(AlertReplays, "first_sight", first_sight)  # once
        await first_sight(self, *args)
        raise ConnectionError("storage went away")

    monkeypatch.setattr(AlertReplays, "first_sight", noted_then_storage_went_away)
    _a_failed_signed_request_and_its_retry_mail_once(alerts_app, azurite, sandbox)


def test_a_passed_through_alert_mails_footer_gives_the_time_it_was_sent_in_the_one_date_format(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    """Posted at 16:07:30, it says 16:07 (not 16:06, the start of its two-minute retry window); a retry that
    races it is still the same mail."""
    from datetime import UTC, datetime

    from shared.alerts.grouping import group_alerts
    from shared.alerts.intake import parse_alerts
    from shared.alerts.notify import Notifier
    from shared.config import settings
    from shared.routing_file import notify_config
    from shared.store import store

    config = settings()
    routing = notify_config(config)
    [group] = group_alerts(parse_alerts(fresh("alertmanager"), "alertmanager"), routing)
    today = datetime.now(UTC).replace(hour=16, minute=7, second=30, microsecond=0)

    async def posted_and_retried() -> list[str | None]:
        notifier = Notifier(config, store(config.storage))
        receiver = routing.receiver(group.receiver)
        first = await notifier.pass_through(group, receiver, today)
        retry = await notifier.pass_through(group, receiver, today.replace(second=50))
        return [first, retry]

    first, retry = run(posted_and_retried())
    assert first is not None and retry == first
    run(drain_queue(azurite.connection_string, "mail-outbox", alerts_app.mail_outbox))
    [mail] = sandbox.sent()
    footer = f"to {group.receiver} at {today:%Y-%m-%d} 16:07 UTC."
    assert footer in mail["body"]["content"]


def test_an_unknown_severity_is_a_400_and_the_routing_files_severity_map_routes_its_own_words(
    alerts_app: Any, azurite: AzuriteProcess
) -> None:
    status, answer = _post(alerts_app, {"name": "X", "severity": "sometimes"})
    assert status == 400
    assert answer["error"]["details"][0]["field"] == "alert.severity"
    assert "critical, high, warning, info" in answer["error"]["details"][0]["message"]
    status, answer = _post(alerts_app, {"name": "X", "severity": "blocker"})  # severity_map: Blocker: critical
    assert status == 202 and answer["groups"][0]["receiver"] == "oncall"


def test_a_generic_alert_without_a_name_gets_the_same_answer_detected_or_named(alerts_app: Any) -> None:
    body = {"severity": "critical", "summary": "disk full"}
    detected, named = _post(alerts_app, body), _post(alerts_app, body, source="generic")
    assert detected[0] == named[0] == 400
    assert (
        detected[1]["error"]["details"]
        == named[1]["error"]["details"]
        == [{"field": "alert.name", "message": "is required"}]
    )
