"""The digest timer's tick against Azurite and the sandbox: a digest on Europe/Berlin's wall clock runs at
07:00 local in summer and in winter, each occurrence once across instances (claims in the Table), a missed one
once within the grace, and a failing digest does not stop the others. The clock is a parameter."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devhost.azurite import AzuriteProcess
from sandbox.launcher import SandboxProcess
from shared.config import settings
from shared.store import store

from ..helpers import drain_queue, run

ROUTING = """
receivers:
  - {name: oncall, to: [alice@contoso.test]}
route: {receiver: oncall}
digests:
  - name: morning
    report: waiting
    mailbox: support@contoso.test
    to: [bob@contoso.test]
    schedule: "0 7 * * *"
    timezone: Europe/Berlin
  - name: forbidden
    report: waiting
    mailbox: alice@contoso.test
    to: [bob@contoso.test]
    schedule: "0 7 * * *"
    timezone: Europe/Berlin
"""


@pytest.fixture
def scheduled(app_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from shared.routing_file import notify_config

    routing = tmp_path / "notify.yaml"
    routing.write_text(ROUTING)
    monkeypatch.setenv("NOTIFY_CONFIG", str(routing))
    notify_config.cache_clear()
    yield notify_config(settings())
    notify_config.cache_clear()


def _tick(config: Any, now: datetime) -> dict[str, tuple[str | None, str]]:
    from shared.digests.scheduled import run_due_digests
    from shared.graph import graph_client

    async def go() -> Any:
        app = settings()
        return await run_due_digests(config, app, store(app.storage), lambda: graph_client(app), now)

    return {t.key: (t.ran.isoformat() if t.ran else None, t.outcome) for t in run(go())}


def test_a_berlin_digest_runs_at_7_local_once_across_instances_in_summer_and_winter_and_a_failing_one_stops_nothing(
    scheduled: Any, sandbox: SandboxProcess, azurite: AzuriteProcess
) -> None:
    summer = datetime(2026, 7, 1, 5, 0, 20, tzinfo=UTC)  # 07:00:20 CEST
    assert _tick(scheduled, summer) == {
        "mailbox:morning": ("2026-07-01T05:00:00+00:00", "sent"),
        "mailbox:forbidden": ("2026-07-01T05:00:00+00:00", "failed"),
    }
    assert _tick(scheduled, summer) == {"mailbox:morning": (None, ""), "mailbox:forbidden": (None, "")}  # claimed
    assert _tick(scheduled, datetime(2026, 7, 1, 6, 0, 20, tzinfo=UTC))["mailbox:morning"] == (None, "")  # 08:00
    # the app was down from 06:50 to 07:30 CET: the missed occurrence runs once, late, within the hour's grace
    winter = datetime(2026, 12, 1, 6, 30, tzinfo=UTC)
    assert _tick(scheduled, winter)["mailbox:morning"] == ("2026-12-01T06:00:00+00:00", "sent")
    assert _tick(scheduled, winter)["mailbox:morning"] == (None, "")
    # two hours late is beyond the grace: skipped, recorded, nothing sent
    assert _tick(scheduled, datetime(2026, 12, 2, 8, 0, 1, tzinfo=UTC))["mailbox:morning"] == (None, "")

    import function_app

    run(drain_queue(azurite.connection_string, "mail-outbox", function_app.mail_outbox))
    subjects = [m["subject"] for m in sandbox.sent()]
    assert len(subjects) == 2 and all(s.endswith("waiting in support@contoso.test (morning)") for s in subjects)

    async def claims() -> list[str]:
        return await store(settings().storage).digest_claims.claimed("mailbox:morning")

    assert run(claims()) == ["2026-07-01T05:00:00Z", "2026-12-01T06:00:00Z", "2026-12-02T06:00:00Z"]


def test_an_occurrence_whose_instance_died_mid_run_is_run_again_once_by_another(
    scheduled: Any, sandbox: SandboxProcess, azurite: AzuriteProcess
) -> None:
    """An instance claimed 07:00 and died before noting an outcome: 15 minutes on, another instance takes the
    claim over and runs it (the digest's run record makes that one mail), once."""
    from datetime import timedelta

    from shared.store.storage import DIGEST_SCHEDULE_TABLE, time_text

    async def crashed_claim() -> None:
        row = {
            "PartitionKey": "mailbox:morning",
            "RowKey": "2026-07-01T05:00:00Z",
            "run": True,
            "reason": "due",
            "claimedAt": time_text(datetime.now(UTC) - timedelta(minutes=20)),
            "instance": "died:1",
        }
        await store(settings().storage).storage.insert_row(DIGEST_SCHEDULE_TABLE, row)

    run(crashed_claim())
    now = datetime(2026, 7, 1, 5, 20, tzinfo=UTC)  # 07:20 CEST, within the grace
    assert _tick(scheduled, now)["mailbox:morning"] == ("2026-07-01T05:00:00+00:00", "sent")
    assert _tick(scheduled, now)["mailbox:morning"] == (None, "")  # finished now: not run a third time

    import function_app

    run(drain_queue(azurite.connection_string, "mail-outbox", function_app.mail_outbox))
    assert len(sandbox.sent()) == 1
