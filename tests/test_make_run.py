"""`make run`: set-up, the whole app on its embedded default, the banner's example working, a clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from devhost.azurite import free_port

ROOT = Path(__file__).resolve().parent.parent
SESSION_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "AZURE_AUTHORITY_HOST",
    "GRAPH_BASE_URL",
    "KEY_VAULT_URL",
    "GRAPH_TENANT_ID",
    "GRAPH_CLIENT_ID",
)
# `make run` keeps its sandbox, Azurite and local.settings.json in the checkout: one worker runs these in turn
pytestmark = [pytest.mark.xdist_group("make-run"), pytest.mark.long]


def test_make_run_reaches_its_banner_whose_curls_send_a_mail_and_an_alert_and_sigint_stops_everything() -> None:
    run, (http, sandbox, *_), output = _start_make_run()
    try:
        curl = next(line.strip() for line in output if line.strip().startswith("curl -s -X POST"))
        answer = json.loads(
            subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30, check=True).stdout
        )
        assert answer["status"] == "queued"

        status = {}
        for _ in range(100):
            status = httpx.get(f"http://127.0.0.1:{http}/api/mail/{answer['id']}").json()
            if status["status"] == "sent":
                break
            time.sleep(0.1)
        assert status["status"] == "sent", status
        trust = ssl.create_default_context(cafile=str(ROOT / ".sandbox" / "ca.pem"))
        inbox = httpx.get(
            f"https://127.0.0.1:{sandbox}/_sandbox/users/alice@contoso.test/messages", verify=trust
        ).json()["value"]
        assert "Hello from make run" in [m["subject"] for m in inbox]

        alert_curl = next(
            line.strip() for line in output if line.strip().startswith("curl -s -X POST http") and "/api/alerts" in line
        )
        alerted = json.loads(
            subprocess.run(["bash", "-c", alert_curl], capture_output=True, text=True, timeout=30, check=True).stdout
        )
        assert alerted["accepted"] == 1 and [g["receiver"] for g in alerted["groups"]] == ["oncall"]
        dry_curl = next(line.strip() for line in output if "dryRun=true" in line)
        preview = json.loads(
            subprocess.run(["bash", "-c", dry_curl], capture_output=True, text=True, timeout=30, check=True).stdout
        )
        assert preview["mails"][0]["subject"] == "[FIRING:1] DiskFilling"
    finally:
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            run.wait(60)
        finally:
            rest = run.stdout.read() if run.stdout else ""
    assert "make run: stopped." in rest, "".join(output) + rest
    time.sleep(0.5)
    try:
        os.killpg(run.pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError("processes of make run are still running after SIGINT")


def _start_make_run() -> tuple[subprocess.Popen[str], list[int], list[str]]:
    """`make run` on free ports, in its own process group, read up to its banner."""
    ports = [free_port() for _ in range(5)]
    http, sandbox, blob, queue, table = ports
    env = {k: v for k, v in os.environ.items() if k not in SESSION_VARIABLES}  # as a developer's shell would be
    run = subprocess.Popen(
        ["make", "run", f"RUN_ARGS=--http-port {http} --sandbox-port {sandbox} --azurite-ports {blob},{queue},{table}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    assert run.stdout is not None
    deadline = time.monotonic() + 300
    for line in run.stdout:
        output.append(line)
        if line.strip() == "RUN READY" or time.monotonic() > deadline:
            break
    if not output or output[-1].strip() != "RUN READY":
        os.killpg(run.pid, signal.SIGKILL)
        raise AssertionError("".join(output))
    return run, ports, output


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    "whole_group",
    [False, True],
    ids=["sigterm-to-make-only-as-docker-stop-or-an-ide", "sigterm-to-the-process-group-as-timeout"],
)
def test_make_run_stopped_with_sigterm_stops_azurite_the_sandbox_and_the_devhost_within_seconds(
    whole_group: bool,
) -> None:
    run, ports, output = _start_make_run()
    started = time.monotonic()
    try:
        if whole_group:
            os.killpg(run.pid, signal.SIGTERM)
        else:
            run.send_signal(signal.SIGTERM)
        run.wait(30)
        rest = run.stdout.read() if run.stdout else ""
        stopped_after = time.monotonic() - started
        time.sleep(0.5)
        left = []
        try:
            os.killpg(run.pid, 0)
            left = subprocess.run(["ps", "-o", "pid,cmd", "-g", str(run.pid)], capture_output=True, text=True).stdout
        except ProcessLookupError:
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)  # never leave a test's processes behind
    assert "make run: stopped." in rest, "".join(output) + rest
    assert not left, f"still running after SIGTERM:\n{left}"
    assert [port for port in ports if _listening(port)] == []
    assert stopped_after < 10, stopped_after  # Azurite used to hold on for 10 s and more


def test_the_banner_says_that_function_keys_are_not_checked_locally() -> None:
    from devhost.azurite import AzuriteProcess
    from devhost.run import banner

    azurite = AzuriteProcess(ROOT / ".azurite-unused", (10000, 10001, 10002))  # not started: only its ports
    text = banner("http://127.0.0.1:7071", "https://127.0.0.1:8790", azurite)
    assert "function keys are not checked locally, as with Core Tools' `func start`" in text
    assert "on Azure every route but health and OpenAPI needs one (x-functions-key or ?code=)" in text
