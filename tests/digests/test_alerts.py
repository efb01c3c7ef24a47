"""The alert digest: digest-mode alerts in one mail per receiver, each sent exactly once, also when a run dies
after submitting its mail and the timer runs again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.alerts.dispatch import ingest
from shared.alerts.intake import parse_alerts
from shared.alerts.routing import notify_config
from shared.config import settings
from shared.digests.alerts import AlertDigestRun, run_alert_digests
from shared.store import ALERT_DIGEST_TABLE, StatusChanged, Store, store

from ..helpers import drain_queue, run, user_function


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
    await ingest(_alerts(names), notify_config(config), store(config.storage), datetime.now(UTC))


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
    run(user_function(digest_app.alert_digest)(TimerRequest(past_due=False)))
    run(user_function(digest_app.alert_digest)(TimerRequest(past_due=False)))  # nothing left: no second mail
    _deliver(digest_app, azurite)
    [mail] = sandbox.sent()
    assert mail["subject"] == "[ALERT DIGEST] 4 alerts, 2 kinds (low-priority)"
    assert [r["emailAddress"]["address"] for r in mail["toRecipients"]] == ["bob@contoso.test"]
    body = mail["body"]["content"]
    assert "CertificateExpiring" in body and "QueueBacklog" in body and "DiskFilling" not in body
    assert body.index("CertificateExpiring") < body.index("QueueBacklog")  # warning before info


class _DiesAfterTheMail(Store):
    """A store whose process 'dies' (raises) when the digest deletes what it mailed."""

    async def delete_row(self, table: str, partition: str, row: str, etag: str | None = None) -> None:
        if table == ALERT_DIGEST_TABLE:
            raise ConnectionError("the worker died")
        await super().delete_row(table, partition, row, etag)


def test_each_buffered_alert_is_sent_once_when_the_run_dies_and_the_timer_runs_again(
    digest_app: Any, sandbox: SandboxProcess, azurite: AzuriteProcess
) -> None:
    run(_buffer(WAITING[:4]))

    async def dying() -> None:
        config = settings()
        target = _DiesAfterTheMail(config.storage)
        try:
            await run_alert_digests(notify_config(config), config, target, datetime.now(UTC))
        finally:
            await target.close()

    with pytest.raises(ConnectionError):
        run(dying())
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
    class _SeenAgain(Store):
        async def delete_row(self, table: str, partition: str, row: str, etag: str | None = None) -> None:
            raise StatusChanged(row)

    async def scenario() -> list[str]:
        config = settings()
        await _buffer(WAITING[:1])
        target = _SeenAgain(config.storage)
        try:
            first = await run_alert_digests(notify_config(config), config, target, datetime.now(UTC))
        finally:
            await target.close()
        second = await run_alert_digests(notify_config(config), config, store(config.storage), datetime.now(UTC))
        return [r.outcome for r in first + second]

    assert run(scenario()) == ["sent", "sent"]
