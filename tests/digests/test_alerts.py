"""The alert digest: digest-mode alerts in one mail per receiver, each sent exactly once, also when a run dies
after submitting its mail and the timer runs again."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.alerts.grouping import receiver_key
from shared.alerts.intake import parse_alerts
from shared.alerts.render import MAIL_BUDGET
from shared.config import settings
from shared.digests.alerts import AlertDigestRun, run_alert_digest, run_alert_digests
from shared.routing_file import notify_config
from shared.store import StatusChanged, Store, store
from shared.store.alert_digest import AlertDigestBuffer
from shared.store.records import RunRecords

from ..helpers import dispatch_with, drain_queue, http, run, user_function


def _alerts(names: list[tuple[str, str, str]]) -> list[Any]:
    return parse_alerts(
        {
            "alerts": [
                {
                    "name": name,
                    "severity": severity,
                    "labels": {"instance": instance},
                    "summary": f"{name} on {instance}",
                }
                for name, severity, instance in names
            ]
        }
    )


async def _buffer(names: list[tuple[str, str, str]]) -> None:
    config = settings()
    await dispatch_with(store(config.storage)).ingest(_alerts(names), datetime.now(UTC))


def _deliver(app: Any, azurite: AzuriteProcess) -> None:
    run(drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox))


WAITING = [
    ("CertificateExpiring", "warning", "web-1"),
    ("CertificateExpiring", "warning", "web-2"),
    ("CertificateExpiring", "warning", "web-3"),
    ("QueueBacklog", "info", "worker-1"),
    ("DiskFilling", "critical", "db-1"),  # routed to oncall, mailed on its own, not in the digest
]


def test_the_timer_sends_one_digest_of_the_waiting_alerts_then_nothing(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess
) -> None:
    run(_buffer(WAITING))
    run(user_function(digest_app.digest_timer)(TimerRequest(past_due=False)))  # due: the schedule is every minute
    run(user_function(digest_app.digest_timer)(TimerRequest(past_due=False)))  # claimed or emptied: no 2nd mail
    _deliver(digest_app, azurite)
    [mail] = sandbox.sent()
    assert mail["subject"] == "[ALERT DIGEST] 4 alerts, 2 kinds (low-priority)"
    assert [r["emailAddress"]["address"] for r in mail["toRecipients"]] == ["bob@contoso.test"]
    body = mail["body"]["content"]
    assert "CertificateExpiring" in body and "QueueBacklog" in body and "DiskFilling" not in body
    assert body.index("CertificateExpiring") < body.index("QueueBacklog")  # warning before info


class _DiesAfterTheMail(AlertDigestBuffer):
    """A buffer whose process 'dies' (raises) when the digest deletes what it mailed."""

    async def release(self, receiver_key: str, row_key: str, etag: str | None) -> None:
        raise ConnectionError("the worker died")


def test_each_buffered_alert_is_sent_once_when_the_run_dies_and_the_timer_runs_again(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess
) -> None:
    run(_buffer(WAITING[:4]))

    async def dying() -> list[AlertDigestRun]:
        config = settings()
        target = Store(config.storage)
        target.digest_buffer = _DiesAfterTheMail(target.storage)
        try:
            return await run_alert_digests(notify_config(config), config, target, datetime.now(UTC))
        finally:
            await target.close()

    assert [(r.outcome, r.error) for r in run(dying())] == [("failed", "ConnectionError")]
    run(_buffer([("QueueBacklog", "info", "worker-2")]))  # arrives before the timer runs again

    async def again() -> list[AlertDigestRun]:
        config = settings()
        target = store(config.storage)
        first = await run_alert_digests(notify_config(config), config, target, datetime.now(UTC))
        second = await run_alert_digests(notify_config(config), config, target, datetime.now(UTC))
        return first + second

    runs = run(again())
    assert [(r.outcome, r.alerts, r.resumed) for r in runs] == [("sent", 1, True), ("nothing_new", 0, False)]
    _deliver(digest_app, azurite)
    subjects = sorted(m["subject"] for m in sandbox.sent())
    assert subjects == [
        "[ALERT DIGEST] 1 alerts, 1 kinds (low-priority)",  # only worker-2: the other four went in the first mail
        "[ALERT DIGEST] 4 alerts, 2 kinds (low-priority)",
    ]


def test_an_alert_seen_again_during_a_run_stays_for_the_next_digest(digest_app: Any) -> None:
    class _SeenAgain(AlertDigestBuffer):
        async def release(self, receiver_key: str, row_key: str, etag: str | None) -> None:
            raise StatusChanged(row_key)

    async def scenario() -> list[str]:
        config = settings()
        await _buffer(WAITING[:1])
        target = Store(config.storage)
        target.digest_buffer = _SeenAgain(target.storage)
        try:
            first = await run_alert_digests(notify_config(config), config, target, datetime.now(UTC))
        finally:
            await target.close()
        second = await run_alert_digests(notify_config(config), config, store(config.storage), datetime.now(UTC))
        return [r.outcome for r in first + second]

    assert run(scenario()) == ["sent", "sent"]


def test_issue11_2_a_digest_of_many_huge_alerts_is_one_sendable_mail_listing_some_and_counting_the_rest(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess
) -> None:
    alerts = parse_alerts(
        [
            {"name": f"Kind{n:03d}", "severity": "warning", "summary": "s" * 16_000, "description": "d" * 16_000}
            for n in range(300)
        ]
    )

    async def scenario() -> list[AlertDigestRun]:
        config = settings()
        target = store(config.storage)
        await dispatch_with(target).ingest(alerts, datetime.now(UTC))
        return await run_alert_digests(notify_config(config), config, target, datetime.now(UTC))

    assert [(r.outcome, r.alerts) for r in run(scenario())] == [("sent", 300)]
    _deliver(digest_app, azurite)
    [mail] = sandbox.sent()
    assert mail["subject"] == "[ALERT DIGEST] 300 alerts, 300 kinds (low-priority)"
    body = mail["body"]["content"]
    assert len(body) <= MAIL_BUDGET
    assert "and 100 more kinds" in body  # 200 kinds listed, the rest counted
    assert "s" * 299 + "\u2026" in body and "s" * 301 not in body  # each summary cut, with a marker


ROUTING_TWO_DIGESTS = """
receivers:
  - name: first
    to: [alice@contoso.test]
    mode: digest
  - name: second
    to: [bob@contoso.test]
    mode: digest
route:
  receiver: first
  continue: true
  routes:
    - matchers: ['alertname=~".+"']
      receiver: first
      continue: true
    - matchers: ['alertname=~".+"']
      receiver: second
"""


class _FirstReceiverFails(RunRecords):
    """Storage refuses the first receiver's run record (as an outage of that one write would)."""

    async def put(self, name: str, record: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        if name.startswith(f"alerts/{receiver_key('first')}"):
            raise ConnectionError("storage went away")
        return await super().put(name, record, replace=replace)


def test_issue11_2_a_receiver_whose_digest_fails_does_not_stop_the_others(
    digest_app: Any,
    sandbox: SandboxProcess,
    azurite: AzuriteProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routing = tmp_path / "two.yaml"
    routing.write_text(ROUTING_TWO_DIGESTS)
    monkeypatch.setenv("NOTIFY_CONFIG", str(routing))
    notify_config.cache_clear()

    async def scenario() -> list[AlertDigestRun]:
        config = settings()
        await dispatch_with(store(config.storage)).ingest(_alerts(WAITING[:2]), datetime.now(UTC))
        target = Store(config.storage)
        target.digest_runs = _FirstReceiverFails(target.storage, target.digest_runs.container)
        try:
            return await run_alert_digests(notify_config(config), config, target, datetime.now(UTC))
        finally:
            await target.close()

    runs = run(scenario())
    assert [(r.receiver, r.outcome) for r in runs] == [("first", "failed"), ("second", "sent")]
    _deliver(digest_app, azurite)
    [mail] = sandbox.sent()
    assert mail["subject"] == "[ALERT DIGEST] 2 alerts, 1 kinds (second)"


def _run_now(app: Any, receiver: str, dry_run: bool = False) -> tuple[int, dict[str, Any]]:
    params = {"dryRun": "true"} if dry_run else {}
    request = http("POST", f"/api/alert-digests/{receiver}/run", route={"receiver": receiver}, params=params, raw=b"")
    response = run(user_function(app.run_alert_digest)(request))
    return response.status_code, json.loads(response.get_body())


def test_the_alert_digest_runs_now_on_request_and_a_dry_run_previews_it_sending_and_releasing_nothing(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess
) -> None:
    run(_buffer(WAITING))
    status, preview = _run_now(digest_app, "low-priority", dry_run=True)
    assert status == 200 and preview["outcome"] == "dry_run" and preview["alerts"] == 4
    assert preview["mail"]["subject"] == "[ALERT DIGEST] 4 alerts, 2 kinds (low-priority)"
    assert preview["mail"]["to"] == ["bob@contoso.test"] and "CertificateExpiring" in preview["mail"]["html"]
    _deliver(digest_app, azurite)
    assert sandbox.sent() == []  # the dry run sent nothing and left the alerts waiting

    status, sent = _run_now(digest_app, "low-priority")
    assert status == 200 and sent["outcome"] == "sent" and sent["alerts"] == 4 and sent["mailId"]
    assert _run_now(digest_app, "low-priority")[1]["outcome"] == "nothing_new"
    _deliver(digest_app, azurite)
    [mail] = sandbox.sent()
    assert mail["subject"] == "[ALERT DIGEST] 4 alerts, 2 kinds (low-priority)"


def test_running_the_alert_digest_of_an_unknown_or_immediate_receiver_is_refused_with_a_clear_code(
    digest_app: Any,
) -> None:
    status, body = _run_now(digest_app, "nobody")
    assert status == 404 and body["error"]["code"] == "not_found" and "low-priority" in body["error"]["message"]
    status, body = _run_now(digest_app, "oncall", dry_run=True)
    assert status == 409 and body["error"]["code"] == "not_a_digest_receiver"
    assert "mode: immediate" in body["error"]["message"]


def test_two_runs_at_once_the_timers_and_a_manual_one_report_each_alert_once(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess
) -> None:
    """A manual run reads the waiting alerts, then the timer's run reads and mails them all; the manual run must
    not mail them a second time."""
    run(_buffer(WAITING[:4]))

    class _ReadsThenWaits(AlertDigestBuffer):
        async def waiting(self, receiver_key: str) -> Any:
            rows = await super().waiting(receiver_key)
            read.set()
            await other_done.wait()
            return rows

    async def scenario() -> list[str]:
        config = settings()
        routing = notify_config(config)
        receiver = next(r for r in routing.receivers if r.name == "low-priority")
        slow = Store(config.storage)
        slow.digest_buffer = _ReadsThenWaits(slow.storage)
        try:
            manual = asyncio.create_task(run_alert_digest(receiver, config, slow, datetime.now(UTC)))
            await read.wait()
            timer = await run_alert_digest(receiver, config, store(config.storage), datetime.now(UTC))
            other_done.set()
            return sorted([timer.outcome, (await manual).outcome])
        finally:
            await slow.close()

    read, other_done = asyncio.Event(), asyncio.Event()
    outcomes = run(scenario())
    _deliver(digest_app, azurite)
    assert [m["subject"] for m in sandbox.sent()] == ["[ALERT DIGEST] 4 alerts, 2 kinds (low-priority)"]
    assert outcomes == ["running", "sent"]  # the run that came second left the alerts to the first


def test_running_the_alert_digest_while_another_run_holds_it_is_409_digest_running(
    digest_app: Any, sandbox: SandboxProcess
) -> None:
    run(_buffer(WAITING[:1]))

    async def claim() -> Any:
        return await store(settings().storage).digest_statuses.claim_run(
            f"alerts:{receiver_key('low-priority')}", "the timer's run"
        )

    async def release(held: Any) -> None:
        await store(settings().storage).digest_statuses.release_run(held)

    held = run(claim())
    assert held is not None
    status, body = _run_now(digest_app, "low-priority")
    assert (status, body["error"]["code"]) == (409, "digest_running")
    run(release(held))
    assert _run_now(digest_app, "low-priority")[1]["outcome"] == "sent"
