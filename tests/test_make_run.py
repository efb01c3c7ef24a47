"""`make run`: set-up, the whole app on its embedded default, the banner's example working, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
from pathlib import Path

import httpx

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


def test_make_run_reaches_its_banner_whose_curls_send_a_mail_and_an_alert_and_sigint_stops_everything() -> None:
    http, sandbox, blob, queue, table = (free_port() for _ in range(5))
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
    try:
        assert run.stdout is not None
        deadline = time.monotonic() + 300
        for line in run.stdout:
            output.append(line)
            if line.strip() == "RUN READY" or time.monotonic() > deadline:
                break
        assert output and output[-1].strip() == "RUN READY", "".join(output)
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
