"""The devhost runs Functions apps as the host does: HTTP routes, queue triggers, timers, output bindings."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy
from croniter import croniter

from devhost.azurite import AzuriteProcess, free_port
from sandbox.launcher import SandboxProcess

from .helpers import ROOT, SENDER, Devhost
from .helpers import wait_for as _wait

TEST_APP = Path(__file__).resolve().parent / "devhost_app"


def _queue(azurite: AzuriteProcess, name: str) -> QueueClient:
    queue = QueueClient.from_connection_string(
        azurite.connection_string,
        name,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
    )
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
    return queue


@pytest.fixture(scope="module")
def test_app_host(azurite: AzuriteProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("devhost")
    for name in ("ticks", "echoes", "always-fails", "always-fails-poison", "slow"):
        _queue(azurite, name).clear_messages()
    env = {
        **os.environ,
        "AzureWebJobsStorage": azurite.connection_string,
        "DEQUEUE_LOG": str(folder / "dequeues.log"),
        "SLOW_LOG": str(folder / "slow.log"),
    }
    started = time.time()
    host = Devhost(TEST_APP, env, folder / "devhost.log")
    yield {"host": host, "started": started, "folder": folder}
    host.stop()


def test_http_routes_with_parameters_constraints_and_methods(test_app_host: dict[str, Any]) -> None:
    url = test_app_host["host"].url
    answer = httpx.get(f"{url}/api/items/42/bob", params={"x": "1"})
    assert answer.json() == {"route": {"id": "42", "name": "bob"}, "query": {"x": "1"}}
    assert httpx.get(f"{url}/api/items/42").json()["route"] == {"id": "42"}
    assert httpx.get(f"{url}/api/items/special").text == "literal routes win"
    assert httpx.get(f"{url}/api/items/abc").status_code == 404  # {id:int}
    assert httpx.get(f"{url}/items/42").status_code == 404  # the route prefix from host.json
    assert httpx.post(f"{url}/api/items/42").status_code == 405
    assert httpx.get(f"{url}/api/boom").status_code == 500
    assert httpx.get(f"{url}/api/items/7").status_code == 200  # a failed function does not stop the host


def test_queue_output_binding_with_a_setting_in_the_queue_name(
    test_app_host: dict[str, Any], azurite: AzuriteProcess
) -> None:
    assert httpx.post(f"{test_app_host['host'].url}/api/echo", content=b"hello queue").status_code == 202
    [message] = _queue(azurite, "echoes").receive_messages()
    assert message.content == "hello queue"


def test_a_chunked_request_body_is_refused_with_411_and_never_reaches_the_function(
    test_app_host: dict[str, Any], azurite: AzuriteProcess
) -> None:
    echoes = _queue(azurite, "echoes")
    echoes.clear_messages()
    answer = httpx.post(f"{test_app_host['host'].url}/api/echo", content=iter([b"hello ", b"chunks"]))
    assert answer.status_code == 411
    assert answer.json()["error"]["code"] == "length_required"
    assert "Content-Length" in answer.json()["error"]["message"]
    assert echoes.peek_messages() == []  # the function did not run


def test_a_body_reaches_the_function_only_with_a_content_length_above_zero(
    test_app_host: dict[str, Any], azurite: AzuriteProcess
) -> None:
    echoes = _queue(azurite, "echoes")
    echoes.clear_messages()
    url = f"{test_app_host['host'].url}/api/echo"
    assert httpx.post(url, content=b"with a length").status_code == 202
    assert httpx.post(url, headers={"Content-Length": "0"}).status_code == 202
    assert [m.content for m in echoes.receive_messages(max_messages=8)] == ["with a length", ""]


def test_a_body_over_the_hosts_100_mb_is_refused_with_413_before_it_is_read(
    test_app_host: dict[str, Any], azurite: AzuriteProcess
) -> None:
    import socket

    echoes = _queue(azurite, "echoes")
    echoes.clear_messages()
    host = test_app_host["host"]
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as connection:
        connection.sendall(
            b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 104857601\r\n\r\nonly the start of it"
        )
        status_line = connection.recv(4096).split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert echoes.peek_messages() == []  # the function did not run


def test_repeated_query_parameters_arrive_joined_with_commas_and_empty_ones_dropped(
    test_app_host: dict[str, Any],
) -> None:
    url = test_app_host["host"].url
    answer = httpx.get(f"{url}/api/items/42?dryRun=true&dryRun=false&empty=&x=1")
    assert answer.json()["query"] == {"dryRun": "true,false", "x": "1"}


def test_a_failing_function_is_retried_with_rising_dequeue_counts_then_poisoned(
    test_app_host: dict[str, Any], azurite: AzuriteProcess
) -> None:
    _queue(azurite, "always-fails").send_message("job-1")
    poison = _queue(azurite, "always-fails-poison")
    _wait(lambda: poison.peek_messages(), 30, "the poison queue")
    assert poison.peek_messages()[0].content == "job-1"
    lines = (test_app_host["folder"] / "dequeues.log").read_text().split("\n")
    assert [line for line in lines if line] == [f"job-1 {n}" for n in range(1, 6)]
    assert httpx.get(f"{test_app_host['host'].url}/api/items/1").status_code == 200


def test_a_timer_scheduled_through_a_setting_fires_every_second_and_on_startup(
    test_app_host: dict[str, Any], azurite: AzuriteProcess
) -> None:
    time.sleep(3.2)
    ticks = [json.loads(m.content) for m in _queue(azurite, "ticks").receive_messages(max_messages=32)]
    times = sorted(t["at"] for t in ticks)
    assert len(times) >= 4
    assert times[0] - test_app_host["started"] < 10  # runOnStartup: fired at start, before any schedule
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]  # the first tick is the startup one
    assert all(0.7 < gap < 1.5 for gap in gaps), gaps


@pytest.mark.parametrize(
    ("website_time_zone", "zone"),
    [("", UTC), ("America/New_York", ZoneInfo("America/New_York"))],
    ids=["utc-by-default", "website-time-zone"],
)
def test_timer_schedules_are_evaluated_in_utc_or_website_time_zone_never_in_the_machines_local_time(
    website_time_zone: str, zone: tzinfo, azurite: AzuriteProcess, tmp_path: Path
) -> None:
    queue = f"ticks-zone-{free_port()}"
    due = datetime.now(zone).replace(microsecond=0) + timedelta(seconds=10)  # daily, due in 10 s
    env = {
        **os.environ,
        "TZ": "Asia/Kolkata",  # the machine's local time: UTC+05:30, so a local-time host misses by hours
        "WEBSITE_TIME_ZONE": website_time_zone,
        "AzureWebJobsStorage": azurite.connection_string,
        "TICK_SCHEDULE": f"{due.second} {due.minute} {due.hour} * * *",
        "TICK_QUEUE": queue,
        "DEQUEUE_LOG": str(tmp_path / "d.log"),
        "SLOW_LOG": str(tmp_path / "s.log"),
    }
    host = Devhost(TEST_APP, env, tmp_path / "devhost.log")
    ticks = _queue(azurite, queue)
    try:
        _wait(lambda: len(ticks.peek_messages(max_messages=8)) >= 2, 25, "the scheduled tick after the startup one")
    finally:
        host.stop()
    scheduled = [json.loads(m.content) for m in ticks.receive_messages(max_messages=8)][1:]
    assert len(scheduled) == 1
    assert due.timestamp() <= scheduled[0]["at"] < due.timestamp() + 2
    listed = f"tick: timer {env['TICK_SCHEDULE']} ({website_time_zone or 'UTC'}; next {due.isoformat(sep=' ')})"
    assert listed in (tmp_path / "devhost.log").read_text()


def test_every_setting_the_apps_bindings_name_has_a_value_in_the_local_settings_example() -> None:
    """The host resolves `%NAME%` in bindings from app settings only; a missing one disables the function."""
    code = [ROOT / "function_app.py", *sorted((ROOT / "shared").rglob("*.py"))]  # schedules: shared/routes.py
    named = {name for path in code for name in re.findall(r"\"%([A-Za-z0-9_]+)%\"", path.read_text())}
    values = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    assert named - set(values) == set()
    for name in ("ALERT_DIGEST_SCHEDULE", "MAILBOX_DIGEST_SCHEDULE"):  # read by the app, no longer bound
        assert croniter.is_valid(values[name], second_at_beginning=True) and len(values[name].split()) == 6


def test_stopping_finishes_in_flight_invocations(azurite: AzuriteProcess, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AzureWebJobsStorage": azurite.connection_string,
        "SLOW_LOG": str(tmp_path / "slow.log"),
        "DEQUEUE_LOG": str(tmp_path / "d.log"),
        "TICK_SCHEDULE": "0 0 0 1 1 *",
        "SLOW_QUEUE": "slow-stop-test",
    }
    host = Devhost(TEST_APP, env, tmp_path / "devhost.log")
    slow = _queue(azurite, "slow-stop-test")
    try:
        slow.send_message("work")
        _wait(lambda: (tmp_path / "slow.log").exists(), 20, "the slow function to start")
    except BaseException:
        host.process.kill()  # never leave a host behind when the test fails early
        raise
    assert host.stop(signal.SIGTERM) == 0
    assert (tmp_path / "slow.log").read_text().split() == ["started", "finished"]
    assert slow.get_queue_properties().approximate_message_count == 0


def test_a_host_whose_storage_went_away_still_stops_promptly(tmp_path: Path) -> None:
    storage = AzuriteProcess(tmp_path / "azurite", (free_port(), free_port(), free_port())).start()
    env = {
        **os.environ,
        "AzureWebJobsStorage": storage.connection_string,
        "SLOW_LOG": str(tmp_path / "s.log"),
        "DEQUEUE_LOG": str(tmp_path / "d.log"),
        "TICK_SCHEDULE": "0 0 0 1 1 *",
    }
    try:
        host = Devhost(TEST_APP, env, tmp_path / "devhost.log", "--shutdown-timeout", "3")
    finally:
        storage.stop(grace=2)
    time.sleep(1)  # the pollers are now retrying an unreachable queue
    started = time.monotonic()
    assert host.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_azurite_exits_within_two_seconds_of_sigterm_or_sigint(signum: int, tmp_path: Path) -> None:
    storage = AzuriteProcess(tmp_path / "azurite").start()
    try:
        queue = _queue(storage, "before-stop")
        queue.send_message("kept")
        queue.close()
        assert storage.process is not None
        storage.process.send_signal(signum)
        assert storage.process.wait(2) == 0  # it used to linger 10 s after SIGTERM, and not end after SIGINT
    finally:
        storage.stop(grace=1)


# -- the real app, end to end ------------------------------------------------------------------------------
@pytest.fixture
def app_host_env(app_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **app_env, "MAIL_SEND_LEASE_SECONDS": "5"}


def _real_devhost(env: dict[str, str], log: Path, *args: str) -> Devhost:
    return Devhost(ROOT, env, log, "--settings", str(ROOT / "local.settings.json.example"), *args)


def test_a_mail_posted_to_the_devhost_arrives_within_5_seconds(
    app_host_env: dict[str, str], sandbox: SandboxProcess, tmp_path: Path
) -> None:
    host = _real_devhost(app_host_env, tmp_path / "devhost.log")
    try:
        started = time.monotonic()
        answer = httpx.post(
            f"{host.url}/api/mail", json={"to": ["alice@contoso.test"], "subject": "via devhost", "text": "hello"}
        )
        assert answer.status_code == 202
        mail_id = answer.json()["id"]
        _wait(lambda: httpx.get(f"{host.url}/api/mail/{mail_id}").json()["status"] == "sent", 5, "status sent")
        assert time.monotonic() - started < 5
        assert [m["subject"] for m in sandbox.mailbox("alice@contoso.test")] == ["via devhost"]
        assert [m["subject"] for m in sandbox.mailbox(SENDER, "sentitems")] == ["via devhost"]
    finally:
        host.stop()


def test_a_mail_from_an_outside_producer_is_delivered_through_the_devhost(
    app_host_env: dict[str, str], azurite: AzuriteProcess, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    _queue(azurite, "mail-outbox").send_message(
        json.dumps(
            {"id": "producer-1", "to": ["bob@contoso.test"], "subject": "from a producer", "text": "queued directly"}
        )
    )
    host = _real_devhost(app_host_env, tmp_path / "devhost.log")
    try:
        _wait(lambda: sandbox.mailbox("bob@contoso.test"), 10, "the mail")
        assert httpx.get(f"{host.url}/api/mail/producer-1").json()["status"] == "sent"
    finally:
        host.stop()


def _enqueue(azurite: AzuriteProcess, prefix: str, count: int) -> None:
    queue = _queue(azurite, "mail-outbox")
    for n in range(count):
        queue.send_message(
            json.dumps({"id": f"{prefix}-{n}", "to": ["bob@contoso.test"], "subject": f"{prefix} {n}", "text": "drain"})
        )


def _sent_subjects(sandbox: SandboxProcess, prefix: str) -> list[str]:
    return [m["subject"] for m in sandbox.sent() if m["subject"].startswith(prefix)]


@pytest.mark.long
def test_two_devhosts_drain_500_mails_each_sent_exactly_once(
    app_host_env: dict[str, str], azurite: AzuriteProcess, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    _enqueue(azurite, "drain", 500)
    hosts = [_real_devhost(app_host_env, tmp_path / f"devhost{n}.log") for n in range(2)]
    try:
        _wait(lambda: len(_sent_subjects(sandbox, "drain")) >= 500, 120, "500 mails")
        time.sleep(1)
    finally:
        for host in hosts:
            host.stop()
    subjects = _sent_subjects(sandbox, "drain")
    assert len(subjects) == len(set(subjects)) == 500
    shares = [
        (tmp_path / f"devhost{n}.log").read_text().count("Executed 'Functions.mail_outbox' (Succeeded")
        for n in range(2)
    ]
    assert all(share > 50 for share in shares), shares  # both instances competed for the queue


@pytest.mark.long
def test_killing_one_of_two_devhosts_mid_drain_loses_no_mail(
    app_host_env: dict[str, str], azurite: AzuriteProcess, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    sandbox.set_faults(latencyMs=20)  # slow the drain enough to kill mid-way
    _enqueue(azurite, "kill", 300)
    survivor = _real_devhost(app_host_env, tmp_path / "survivor.log", "--lock-seconds", "6")
    victim = _real_devhost(app_host_env, tmp_path / "victim.log", "--lock-seconds", "6")
    try:
        _wait(lambda: len(_sent_subjects(sandbox, "kill")) >= 60, 60, "the drain to be under way")
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        _wait(lambda: len(set(_sent_subjects(sandbox, "kill"))) >= 300, 120, "every mail after the kill")
    finally:
        survivor.stop()
        victim.stop()
    subjects = _sent_subjects(sandbox, "kill")
    assert set(subjects) == {f"kill {n}" for n in range(300)}
    # only a mail the victim had handed to Graph but not yet marked sent may go twice (documented window)
    assert len(subjects) - 300 <= 16


def test_a_function_disabled_by_its_app_setting_is_not_hosted(azurite: AzuriteProcess, tmp_path: Path) -> None:
    env = {**os.environ, "AzureWebJobsStorage": azurite.connection_string, "AzureWebJobs.special.Disabled": "true"}
    host = Devhost(TEST_APP, env, tmp_path / "devhost.log")
    try:
        assert httpx.get(f"{host.url}/api/items/special").status_code == 404  # `special` is gone
        assert httpx.get(f"{host.url}/api/items/7").status_code == 200  # the others still run
    finally:
        host.stop()


def test_a_message_that_is_not_base64_goes_alone_to_the_poison_queue_at_once_and_the_mails_beside_it_are_sent(
    app_host_env: dict[str, str], azurite: AzuriteProcess, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    raw = QueueClient.from_connection_string(
        azurite.connection_string, "mail-outbox"
    )  # no base64: as a careless producer
    _queue(azurite, "mail-outbox-poison").clear_messages()
    _enqueue(azurite, "beside-junk", 2)
    raw.send_message("{not base64: a producer forgot the host's encoding}")
    _enqueue(azurite, "after-junk", 2)
    host = _real_devhost(app_host_env, tmp_path / "devhost.log")
    try:
        _wait(
            lambda: len(_sent_subjects(sandbox, "beside-junk") + _sent_subjects(sandbox, "after-junk")) >= 4,
            15,
            "4 mails",
        )
        poison = QueueClient.from_connection_string(azurite.connection_string, "mail-outbox-poison")
        _wait(lambda: poison.peek_messages(max_messages=32), 10, "the poison queue")
        time.sleep(1)  # a few more polls: the message must be poisoned once, not once per dequeue
        assert [m.content for m in poison.peek_messages(max_messages=32)] == [
            "{not base64: a producer forgot the host's encoding}"
        ]
        assert raw.get_queue_properties().approximate_message_count == 0
    finally:
        host.stop()
    assert "not valid base64" in (tmp_path / "devhost.log").read_text()
