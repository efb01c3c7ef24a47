"""Grouping with state, on Azurite and the sandbox: group_wait, one mail per group, repeats, resolved notices,
redelivery, concurrent flushes and a flush that dies half-way. Time is moved by ingesting "an hour ago", so
every flush of a scenario is already due; each flush run is the group's live message."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.alerts.dispatch import Flush
from shared.alerts.grouping import receiver_key
from shared.alerts.intake import parse_alerts
from shared.config import settings
from shared.store import Store, store
from shared.store.alert_digest import BufferedAlert
from shared.store.alert_groups import AlertGroups, AlertRow

from ..helpers import dispatch_with, drain_queue, live_flush, run

START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def alert(instance: str, status: str = "firing", name: str = "DiskFilling", **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "severity": labels.pop("severity", "critical"),
        "labels": {"instance": instance, **labels},
        "summary": f"{name} on {instance}",
    }


async def _ingest(alerts: list[dict[str, Any]], at: datetime) -> str:
    config = settings()
    ingested = await dispatch_with(store(config.storage)).ingest(parse_alerts({"alerts": alerts}), at)
    return ingested.groups[0].key


async def _live(key: str) -> str | None:
    """The group's live flush message, as `alerts-flush` carries it."""
    return await live_flush(store(settings().storage), key)


async def _flush(text: str | None, target: Store | None = None) -> Flush:
    assert text is not None, "the group has no flush pending"
    config = settings()
    return await dispatch_with(target or store(config.storage)).flush(text)


async def _deliver(app: Any, azurite: AzuriteProcess) -> None:
    await drain_queue(azurite.connection_string, "mail-outbox", app.mail_outbox)


def _subjects(sandbox: SandboxProcess, since: int = 0) -> list[str]:
    """Subjects of the mails sent, sorted: the outbox sends a batch concurrently."""
    return sorted(m["subject"] for m in sandbox.sent(since))


def test_alerts_of_one_name_become_one_mail_after_group_wait(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> tuple[str, str | None, Flush, list[AlertRow]]:
        key = await _ingest([alert("db-1"), alert("db-2")], START)
        await _ingest([alert("db-3")], START + timedelta(seconds=10))  # within group_wait: same flush
        live = await _live(key)
        done = await _flush(live)
        await _deliver(alerts_app, azurite)
        rows = await store(settings().storage).groups.alerts(key)
        return key, live, done, rows

    _, live, done, rows = run(scenario())
    assert live is not None and json.loads(live)["due"] == (START + timedelta(seconds=30)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert done.outcome == "notified" and done.alerts == 3
    sent = sandbox.sent()
    assert [m["subject"] for m in sent] == ["[FIRING:3] DiskFilling"]
    assert [r["emailAddress"]["address"] for r in sent[0]["toRecipients"]] == ["alice@contoso.test"]
    body = sent[0]["body"]["content"]
    assert all(f"DiskFilling on db-{n}" in body for n in (1, 2, 3))
    assert sorted(str(r.notified) for r in rows) == ["firing"] * 3


def test_a_redelivered_or_superseded_flush_sends_nothing_more(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> list[str]:
        key = await _ingest([alert("db-1")], START)
        live = await _live(key)
        first = await _flush(live)
        again = await _flush(live)  # the host redelivers the message it already handled
        await _deliver(alerts_app, azurite)
        return [first.outcome, again.outcome]

    assert run(scenario()) == ["notified", "stale"]
    assert _subjects(sandbox) == ["[FIRING:1] DiskFilling"]


def test_nothing_new_is_quiet_a_new_alert_is_told_and_repeats_wait_for_repeat_interval(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> list[str]:
        key = await _ingest([alert("db-1")], START)
        outcomes = [(await _flush(await _live(key))).outcome]  # +30 s: the first notice
        outcomes.append((await _flush(await _live(key))).outcome)  # +5 m 30 s: nothing new
        await _ingest([alert("db-1"), alert("db-2")], START + timedelta(minutes=6))
        outcomes.append((await _flush(await _live(key))).outcome)  # +10 m 30 s: db-2 is new
        outcomes.append((await _flush(await _live(key))).outcome)  # +15 m 30 s: 5 m since the last notice
        outcomes.append((await _flush(await _live(key))).outcome)  # +20 m 30 s: repeat_interval (10 m) passed
        await _deliver(alerts_app, azurite)
        return outcomes

    assert run(scenario()) == ["notified", "quiet", "notified", "quiet", "notified"]
    assert _subjects(sandbox) == ["[FIRING:1] DiskFilling", "[FIRING:2] DiskFilling", "[FIRING:2] DiskFilling"]


def test_resolved_alerts_are_announced_once_and_an_empty_group_goes_idle(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> tuple[list[str], str | None, list[dict[str, Any]]]:
        key = await _ingest([alert("db-1"), alert("db-2")], START)
        outcomes = [(await _flush(await _live(key))).outcome]
        await _deliver(alerts_app, azurite)
        await _ingest([alert("db-1", "resolved")], START + timedelta(minutes=1))
        outcomes.append((await _flush(await _live(key))).outcome)
        await _deliver(alerts_app, azurite)
        await _ingest([alert("db-2", "resolved")], START + timedelta(minutes=7))
        outcomes.append((await _flush(await _live(key))).outcome)
        await _deliver(alerts_app, azurite)
        groups = store(settings().storage).groups
        return outcomes, await _live(key), (await groups.get(key) is not None, await groups.alerts(key))

    outcomes, live, (group_kept, rows) = run(scenario())
    assert outcomes == ["notified", "notified", "notified"]
    sent = sandbox.sent()
    assert [m["subject"] for m in sent] == [
        "[FIRING:2] DiskFilling",
        "[FIRING:1] DiskFilling",
        "[RESOLVED] DiskFilling",
    ]
    assert "DiskFilling on db-1" in sent[1]["body"]["content"]  # the second mail shows db-1 as resolved
    assert live is None and group_kept and rows == []  # only the group's own row is left


def test_without_send_resolved_a_resolution_alone_sends_nothing(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> list[str]:
        key = await _ingest([alert("web-1", team="quiet")], START)
        outcomes = [(await _flush(await _live(key))).outcome]
        await _ingest([alert("web-1", "resolved", team="quiet")], START + timedelta(minutes=1))
        outcomes.append((await _flush(await _live(key))).outcome)
        outcomes.append("idle" if await _live(key) is None else "pending")
        await _deliver(alerts_app, azurite)
        return outcomes

    assert run(scenario()) == ["notified", "quiet", "idle"]
    assert _subjects(sandbox) == ["[FIRING:1] DiskFilling"]


def test_concurrent_flushes_of_one_group_send_one_mail(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> list[str]:
        key = await _ingest([alert(f"db-{n}") for n in range(20)], START)
        live = await _live(key)
        done = await asyncio.gather(*(_flush(live) for _ in range(4)), return_exceptions=True)
        await _deliver(alerts_app, azurite)
        return sorted(d.outcome if isinstance(d, Flush) else "conflict" for d in done)

    outcomes = run(scenario())
    assert outcomes.count("notified") >= 1
    assert _subjects(sandbox) == ["[FIRING:20] DiskFilling"]


class _DiesAfterTheMail(AlertGroups):
    """Groups whose process 'dies' (raises) when the flush marks what it mailed: the step after the mail."""

    async def mark_notified(self, key: str, statuses: dict[str, str]) -> None:
        raise ConnectionError("the worker died")


def test_a_flush_that_died_after_mailing_is_finished_by_its_redelivery_without_a_second_mail(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> list[str]:
        key = await _ingest([alert("db-1")], START)
        live = await _live(key)
        dying = Store(settings().storage)
        dying.groups = _DiesAfterTheMail(dying.storage)
        try:
            with pytest.raises(ConnectionError):
                await _flush(live, dying)
        finally:
            await dying.close()
        await _ingest([alert("db-1"), alert("db-2")], START + timedelta(seconds=40))  # arrives in between
        outcomes = [(await _flush(live)).outcome]  # the redelivery finishes the notice it recorded
        outcomes.append((await _flush(await _live(key))).outcome)  # db-2 was not in it: told next time
        await _deliver(alerts_app, azurite)
        return outcomes

    assert run(scenario()) == ["notified", "notified"]
    assert _subjects(sandbox) == ["[FIRING:1] DiskFilling", "[FIRING:2] DiskFilling"]


def test_digest_mode_alerts_are_kept_for_the_digest_and_not_mailed(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    async def scenario() -> tuple[str | None, list[BufferedAlert]]:
        key = await _ingest([alert("web-1", severity="warning"), alert("web-2", severity="info")], START)
        rows = await store(settings().storage).digest_buffer.waiting(receiver_key("digest"))
        return await _live(key), rows

    live, rows = run(scenario())
    assert live is None
    assert sorted(json.loads(r.alert)["labels"]["instance"] for r in rows) == ["web-1", "web-2"]
    assert {r.receiver for r in rows} == {"digest"}
    queue = QueueClient.from_connection_string(azurite.connection_string, "alerts-flush")
    assert queue.get_queue_properties().approximate_message_count == 0
    queue.close()


def test_issue11_2_fifty_critical_alerts_with_16000_character_texts_are_mailed_in_one_sendable_mail(
    alerts_app: Any, azurite: AzuriteProcess, sandbox: SandboxProcess
) -> None:
    huge = [{**alert(f"db-{n}"), "summary": "s" * 16_000, "description": "d" * 16_000} for n in range(50)]

    async def scenario() -> Flush:
        key = await _ingest(huge, START)
        done = await _flush(await _live(key))
        await _deliver(alerts_app, azurite)
        return done

    assert run(scenario()).outcome == "notified"
    [mail] = sandbox.sent()
    assert mail["subject"] == "[FIRING:50] DiskFilling"
    body = mail["body"]["content"]
    assert body.count("s" * 299 + "\u2026") == 50  # every alert listed, its summary cut with a marker
    assert "s" * 301 not in body and "d" * 2001 not in body
    poison = QueueClient.from_connection_string(azurite.connection_string, "mail-outbox-poison")
    assert poison.get_queue_properties().approximate_message_count == 0
    poison.close()


@pytest.mark.parametrize("text", ["not json", '{"group": 7}', '{"group": "g", "due": "yesterday"}', "[" * 30000])
def test_an_alerts_flush_message_that_is_no_flush_is_poisoned_once_at_once(
    alerts_app: Any, azurite: AzuriteProcess, text: str
) -> None:
    """Issue 11, item 13 and issue 13, item 1: an InvalidMessage is poisoned by the adapter, even before anything
    else has made `alerts-flush-poison` (a queue that does not exist would refuse the copy)."""
    from azure.functions.queue import QueueMessage

    poison = QueueClient.from_connection_string(azurite.connection_string, "alerts-flush-poison")
    poison.delete_queue()

    async def deliver() -> None:
        message = QueueMessage(id="m-1", body=text.encode(), dequeue_count=1)
        await alerts_app.alerts_flush.build().get_user_function()(message)

    run(deliver())  # handled, not raised: the host does not redeliver it
    [copy] = poison.peek_messages()
    assert base64.b64decode(copy.content).decode() == text
    poison.close()
