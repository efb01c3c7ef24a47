"""`GET|PUT /_sandbox/clock`: the sandbox's time, moved forward for everything time-based it models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sandbox.launcher import SandboxProcess

from ..helpers import SUPPORT, bearer


def _now(sandbox: SandboxProcess) -> datetime:
    assert sandbox.control is not None
    answer = sandbox.control.get("/_sandbox/clock")
    assert answer.status_code == 200
    return datetime.fromisoformat(answer.json()["now"].replace("Z", "+00:00"))


def test_the_clock_starts_at_real_time(sandbox: SandboxProcess) -> None:
    assert abs((_now(sandbox) - datetime.now(UTC)).total_seconds()) < 5


def test_advancing_the_clock_moves_received_dates_of_new_mail(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    answer = sandbox.control.put("/_sandbox/clock", json={"advanceSeconds": 3 * 86400})
    assert answer.status_code == 200
    assert abs((_now(sandbox) - datetime.now(UTC) - timedelta(days=3)).total_seconds()) < 5

    sandbox.deliver(SUPPORT, [{"subject": "from the future", "from": "dana@fabrikam.test"}])
    listing = sandbox.control.get(
        f"/v1.0/users/{SUPPORT}/messages", params={"$top": "1"}, headers=bearer(sandbox)
    ).json()
    [newest] = listing["value"]
    received = datetime.fromisoformat(newest["receivedDateTime"].replace("Z", "+00:00"))
    assert newest["subject"] == "from the future"
    assert received > datetime.now(UTC) + timedelta(days=2, hours=23)


def test_a_reset_puts_the_clock_back_to_real_time(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    sandbox.control.put("/_sandbox/clock", json={"advanceSeconds": 86400}).raise_for_status()
    sandbox.reset()
    assert abs((_now(sandbox) - datetime.now(UTC)).total_seconds()) < 5


def test_the_clock_refuses_to_go_back_or_bad_bodies(sandbox: SandboxProcess) -> None:
    assert sandbox.control is not None
    for body in ({"advanceSeconds": -1}, {"advanceSeconds": "60"}, {"seconds": 60}, [60]):
        answer = sandbox.control.put("/_sandbox/clock", json=body)
        assert answer.status_code == 400
        assert "advanceSeconds" in answer.json()["error"]["message"]


def test_a_seeded_received_date_may_be_relative_to_the_sandboxs_now(sandbox: SandboxProcess) -> None:
    [message] = sandbox.deliver(
        SUPPORT, [{"subject": "relative", "from": "a@fabrikam.test", "receivedDateTime": "-26h"}]
    )
    stored = next(m for m in sandbox.mailbox(SUPPORT) if m["id"] == message["id"])
    received = datetime.fromisoformat(stored["receivedDateTime"].replace("Z", "+00:00"))
    assert abs((_now(sandbox) - timedelta(hours=26) - received).total_seconds()) < 5
    seeded = [m for m in sandbox.mailbox(SUPPORT) if m["subject"] == "Outage in region West"]  # the default seed
    assert seeded and _now(sandbox) - timedelta(days=7) < datetime.fromisoformat(
        seeded[0]["receivedDateTime"].replace("Z", "+00:00")
    )
