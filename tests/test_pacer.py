"""Sending budgets end to end (`shared/pacer.py` in the sender), on Azurite and the sandbox with Exchange's
sending limits on. The figures of issue 17, scaled so that each runs in a minute or two: the limits are
raised by the same factor in the sandbox and in the app (which keeps its safety margin: 25 of Exchange's 30 a
minute, 90 of 100 recipients a day), and the daily window is crossed by moving the sandbox's clock and the
pacer's clock together (`PUT /_sandbox/clock`, `MovedClock`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devhost.azurite import AzuriteProcess
from devhost.queues import QueueSettings, QueueTrigger
from sandbox.launcher import SandboxProcess

from .helpers import APP_ID, SENDER, audit_rows, http, run, user_function

ROUTING = """
receivers:
  - name: oncall
    to: [alice@contoso.test]
    group_wait: 1s
    group_interval: 1m
route:
  receiver: oncall
"""
POOL = ["pool-a@contoso.test", "pool-b@contoso.test", "pool-c@contoso.test"]


class MovedClock:
    """The pacer's clock, moved forward with the sandbox's."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


def _limits(sandbox: SandboxProcess, test_seed: dict[str, Any], **exchange: Any) -> None:
    """Reset the sandbox with Exchange's limits on (scaled), and three more mailboxes the app may send from."""
    seed = json.loads(json.dumps(test_seed))
    seed["users"] += [{"userPrincipalName": upn, "displayName": upn.split("@")[0]} for upn in POOL]
    app = next(a for a in seed["apps"] if a["clientId"] == APP_ID)
    app["mailboxScope"] = [*app.get("mailboxScope", []), *POOL]
    seed["exchange"] = exchange
    sandbox.reset(seed)


@pytest.fixture
def budgets_on(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Any]:
    """Turn the app's budgets on with the given settings (the test environment has them off)."""
    from shared.config import settings

    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)

    def configure(**values: str) -> Any:
        monkeypatch.setenv("NOTIFY_CONFIG", str(routing))
        monkeypatch.setenv("MAIL_ALLOWED_SENDERS", ",".join([SENDER, *POOL]))
        monkeypatch.setenv("MAIL_SENDER_POOLS", "bulk: " + ", ".join(POOL))
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        settings.cache_clear()
        return settings()

    return configure


def _mail(index: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"news-{index:04d}",
        "to": ["bob@contoso.test"],
        "subject": f"Newsletter {index:04d}",
        "text": "Hi.",
        **fields,
    }


async def _submit(config: Any, mails: list[dict[str, Any]]) -> None:
    from shared.mail import check_mail, parse_mail
    from shared.outbox import submit_mail
    from shared.store import store

    target = store(config.storage)
    for start in range(0, len(mails), 50):
        chunk = mails[start : start + 50]
        await asyncio.gather(*(submit_mail(target, check_mail(parse_mail(m), config)) for m in chunk))


def _sender_trigger(
    azurite: AzuriteProcess, config: Any, clock: Any = None, recheck: float = 900, seen: Callable[..., None] = print
) -> QueueTrigger:
    """The mail-outbox trigger with the real sender, its pacer on `clock`; `seen(delivery)` after each."""
    from shared.graph import graph_client
    from shared.outbox import Sender
    from shared.pacer import Pacer
    from shared.store import store

    async def deliver(message: Any) -> None:
        target = store(config.storage)
        sender = Sender(config, target, graph_client(config), pacer=Pacer(config, target, clock, recheck))
        delivery = await sender.deliver(message.get_body().decode(), message.id, message.dequeue_count)
        seen(delivery)

    return QueueTrigger(azurite.connection_string, "mail-outbox", deliver, QueueSettings(max_polling_interval=0.2))


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _running(triggers: list[QueueTrigger], body: Awaitable[Any]) -> Any:
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(t.run(stop)) for t in triggers]
    try:
        return await body
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def _times(records: list[dict[str, Any]], field: str) -> list[float]:
    return sorted(datetime.fromisoformat(r[field]).timestamp() for r in records)


def _most_in_a_minute(times: list[float]) -> int:
    return max((sum(1 for t in times if start <= t < start + 60) for start in times), default=0)


@pytest.mark.long
@pytest.mark.xdist_group("drains-of-thousands")  # one worker runs the two heaviest in turn
@pytest.mark.timeout(420)  # the figure: 1,000 mails at a pace Exchange would otherwise carry over (2-3 minutes)
def test_a_critical_alert_goes_out_within_5_s_past_1000_bulk_mails_which_are_all_paced_and_delivered_once(
    budgets_on: Callable[..., Any], azurite: AzuriteProcess, sandbox: SandboxProcess, test_seed: dict[str, Any]
) -> None:
    # Exchange's 30 a minute scaled 30x (900), the app's 25 a minute likewise (750; bulk may use 600 of it): an
    # unpaced sender (about 35 mails/s here) would put Exchange into carry-over, as 30 a minute does in production
    _limits(sandbox, test_seed, messagesPerMinute=900, recipientsPerDay=None)
    config = budgets_on(MAIL_BUDGET_MESSAGES_PER_MINUTE="750", MAIL_BUDGET_RECIPIENTS_PER_DAY="0")
    import function_app

    sent_at: dict[str, float] = {}

    def seen(delivery: Any) -> None:
        if delivery.outcome == "sent":
            sent_at[delivery.mail_id] = time.monotonic()

    async def scenario() -> dict[str, Any]:
        await _submit(config, [_mail(i, priority="bulk") for i in range(1000)])
        flushed: list[float] = []
        flush = user_function(function_app.alerts_flush)

        async def timed_flush(message: Any) -> None:
            await flush(message)
            flushed.append(time.monotonic())

        outbox = _sender_trigger(azurite, config, seen=seen)
        flushes = QueueTrigger(
            azurite.connection_string, "alerts-flush", timed_flush, QueueSettings(max_polling_interval=0.2)
        )

        async def body() -> dict[str, Any]:
            await _until(lambda: len(sent_at) >= 150, 150, "150 bulk mails sent")  # well into the backlog
            alert = {"name": "DatabaseDown", "severity": "critical", "summary": "primary is down"}
            response = await user_function(function_app.post_alerts)(http("POST", "/api/alerts", alert))
            assert response.status_code == 202, response.get_body()
            await _until(lambda: any(k.startswith("app:alert") for k in sent_at), 30, "the alert mail sent")
            backlog_when_alert_sent = 1000 - (len(sent_at) - 1)
            await _until(lambda: len(sent_at) == 1001, 300, "every bulk mail sent")
            alert_id = next(k for k in sent_at if k.startswith("app:alert"))
            return {"waited": sent_at[alert_id] - flushed[0], "backlog": backlog_when_alert_sent}

        return dict(await _running([outbox, flushes], body()))

    result = run(scenario())
    print(
        f"FIGURE critical alert past a bulk backlog: {result['waited']:.2f} s, {result['backlog']} bulk mails waiting"
    )
    assert result["waited"] <= 5.0, result  # from the flush that submitted it to Graph's 202
    assert result["backlog"] >= 100  # it really went past waiting bulk mail
    records = sandbox.sent()
    bulk = [r for r in records if r["subject"].startswith("Newsletter")]
    alert = [r for r in records if r["subject"].startswith("[FIRING")]
    assert sorted(r["subject"] for r in bulk) == [f"Newsletter {i:04d}" for i in range(1000)]  # none lost, none twice
    assert len(alert) == 1 and alert[0]["deliveredAt"] == alert[0]["submittedAt"]  # no Exchange carry-over
    assert all(r["deliveredAt"] == r["submittedAt"] and r["ndr"] is None for r in records)
    assert _most_in_a_minute(_times(records, "submittedAt")) <= 750


def test_a_sender_about_to_cross_its_daily_recipients_defers_the_excess_and_alerts_still_go_from_the_reserve(
    budgets_on: Callable[..., Any], azurite: AzuriteProcess, sandbox: SandboxProcess, test_seed: dict[str, Any]
) -> None:
    # Exchange's 10,000 recipients a day scaled 100x down (100); the app's 9,000 likewise (90), 20% for alerts
    _limits(sandbox, test_seed, messagesPerMinute=None, recipientsPerDay=100)
    config = budgets_on(MAIL_BUDGET_MESSAGES_PER_MINUTE="0", MAIL_BUDGET_RECIPIENTS_PER_DAY="90")
    from shared.mail import app_mail_id, compose_mail
    from shared.outbox import submit_mail
    from shared.store import store

    clock = MovedClock()
    outcomes: dict[str, str] = {}

    async def scenario() -> dict[str, Any]:
        target = store(config.storage)
        await _submit(config, [_mail(i, id=f"mailing-{i}") for i in range(100)])
        outbox = _sender_trigger(azurite, config, clock, recheck=1, seen=lambda d: outcomes.update({d.mail_id: d}))

        async def body() -> dict[str, Any]:
            await _until(lambda: sum(1 for d in outcomes.values() if d.outcome == "sent") == 72, 60, "72 sent")
            await asyncio.sleep(2)
            deferred = [s for i in range(100) if (s := await target.statuses.get(f"mailing-{i}")).status == "deferred"]
            notice = compose_mail(
                app_mail_id("alert", "db-down"), None, ["alice@contoso.test"], "[FIRING:1] DatabaseDown",
                "<p>primary is down</p>", config, importance="high", priority="critical",
            )  # fmt: skip
            await submit_mail(target, notice)
            await _until(lambda: notice.id in outcomes, 30, "the alert mail handled")
            alert_outcome = outcomes[notice.id].outcome
            sandbox.control.put("/_sandbox/clock", json={"advanceSeconds": 86_400 + 1200}).raise_for_status()
            clock.offset += 86_400 + 1200
            await _until(lambda: sum(1 for d in outcomes.values() if d.outcome == "sent") == 101, 60, "all sent")
            return {"deferred": [(s.id, s.answer()) for s in deferred], "alert": alert_outcome}

        return dict(await _running([outbox], body()))

    result = run(scenario())
    assert len(result["deferred"]) == 28  # 72 = 90 less the 20% reserve for alert mail
    assert all(answer["status"] == "deferred" and answer["deferredUntil"] for _, answer in result["deferred"])
    assert result["alert"] == "sent"  # from the reserve, while the ordinary mail waited
    records = sandbox.sent()
    assert len(records) == 101 and all(r["ndr"] is None for r in records)  # never a 5.1.90
    assert sorted(r["subject"] for r in records if r["subject"].startswith("Newsletter")) == [
        f"Newsletter {i:04d}" for i in range(100)
    ]
    deferrals = [r for r in audit_rows(azurite.connection_string) if r["outcome"] == "deferred"]
    assert {r["correlationId"] for r in deferrals} == {mail_id for mail_id, _ in result["deferred"]}


@pytest.mark.long
def test_a_pool_of_3_mailboxes_sends_3_times_the_rate_of_one_each_mailbox_within_its_own(
    budgets_on: Callable[..., Any], azurite: AzuriteProcess, sandbox: SandboxProcess, test_seed: dict[str, Any]
) -> None:
    # 30 a minute scaled 12x (360) in the sandbox, 25 (300) in the app: 240 a minute of ordinary mail a mailbox
    _limits(sandbox, test_seed, messagesPerMinute=360, recipientsPerDay=None)
    config = budgets_on(MAIL_BUDGET_MESSAGES_PER_MINUTE="300", MAIL_BUDGET_RECIPIENTS_PER_DAY="0")
    sent: list[str] = []

    async def scenario() -> None:
        await _submit(config, [_mail(i, id=f"pooled-{i}", senderPool="bulk") for i in range(480)])
        outbox = _sender_trigger(azurite, config, seen=lambda d: d.outcome == "sent" and sent.append(d.mail_id))
        await _running([outbox], _until(lambda: len(sent) == 480, 150, "480 mails sent"))

    run(scenario())
    records = sandbox.sent()
    assert len(records) == 480 and all(r["deliveredAt"] == r["submittedAt"] for r in records)
    per_mailbox = {m: _times([r for r in records if r["mailbox"] == m], "submittedAt") for m in POOL}
    assert all(len(times) >= 480 // 3 - 40 for times in per_mailbox.values()), {
        m: len(t) for m, t in per_mailbox.items()
    }
    paced = 240 / 60  # mails a second one mailbox sends of ordinary mail
    # the pace once the pool has taken the mails in (their first pass holds each one with a ticket)
    everything = _times(records, "submittedAt")[48:]
    rate = (len(everything) - 1) / (everything[-1] - everything[0])
    assert rate >= 2.7 * paced, f"{rate:.1f} mails/s against {paced:.1f} for one mailbox"
    for times in per_mailbox.values():
        steady = times[16:]
        assert (len(steady) - 1) / (steady[-1] - steady[0]) <= paced * 1.25  # each within its own pace


def test_with_budgets_off_the_pacer_reads_and_writes_no_budget_row(
    budgets_on: Callable[..., Any], azurite: AzuriteProcess, sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAIL_BUDGET_* = 0 costs a mail nothing: no budget row is read or changed (with budgets on, each is)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables import TableClient

    from shared.store.mail_budgets import MailBudgets

    with TableClient.from_connection_string(azurite.connection_string, "mailbudgets") as table:
        try:  # the daily figure moved the clock a day on: its budget rows would hold this mail back
            for entity in table.list_entities():
                table.delete_entity(entity)
        except ResourceNotFoundError:
            pass

    calls: list[str] = []
    for name in ("get", "save", "change"):
        real = getattr(MailBudgets, name)

        def spied(self: MailBudgets, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MailBudgets, name, spied)

    def delivered(config: Any, index: int) -> list[str]:
        calls.clear()
        sent: list[Any] = []

        async def scenario() -> None:
            await _submit(config, [_mail(index)])
            await _sender_trigger(azurite, config, seen=sent.append).drain()

        run(scenario())
        assert [str(d.outcome) for d in sent if d.mail_id == _mail(index)["id"]] == ["sent"]
        return list(calls)

    assert delivered(budgets_on(MAIL_BUDGET_MESSAGES_PER_MINUTE="0", MAIL_BUDGET_RECIPIENTS_PER_DAY="0"), 9001) == []
    assert delivered(budgets_on(MAIL_BUDGET_MESSAGES_PER_MINUTE="750", MAIL_BUDGET_RECIPIENTS_PER_DAY="0"), 9002)
