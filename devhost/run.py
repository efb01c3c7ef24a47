"""`make run`: Azurite + the sandbox (default seed) + the devhost, a banner; Ctrl-C or SIGTERM stops them all."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from sandbox.launcher import SandboxProcess

from .azurite import AzuriteProcess

ROOT = Path(__file__).resolve().parent.parent


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def banner(api: str, sandbox: str, azurite: AzuriteProcess) -> str:
    mail = json.dumps(
        {"to": ["alice@contoso.test"], "subject": "Hello from make run", "text": "The notifier works locally."}
    )
    alert = json.dumps({"name": "DiskFilling", "severity": "critical", "summary": "/var on db-1 is 95% full"})
    return f"""
Graph mail notifier is running locally.
  API         {api}/api/mail  (health: {api}/api/health, OpenAPI: {api}/api/openapi.json)
  Mailboxes   {sandbox}/  (the sandbox's mailbox browser; trust .sandbox/ca.pem to skip the warning)
  Azurite     blob :{azurite.blob_port}, queue :{azurite.queue_port}, table :{azurite.table_port}
  Keys        function keys are not checked locally, as with Core Tools' `func start`: any key or none is
              accepted here; on Azure every route but health and OpenAPI needs one (x-functions-key or ?code=)

Send a mail, then find it in alice@contoso.test's Inbox on the mailbox page:
  curl -s -X POST {api}/api/mail -H 'Content-Type: application/json' -d '{mail}'
Its status:
  curl -s {api}/api/mail/<id from the answer>

Raise an alert; critical ones reach alice@contoso.test after group_wait (30 s in config/notify.yaml):
  curl -s -X POST {api}/api/alerts -H 'Content-Type: application/json' -d '{alert}'
See the mail it would make, without sending it:
  curl -s -X POST '{api}/api/alerts?dryRun=true' -H 'Content-Type: application/json' -d '{alert}'

Ctrl-C (or SIGTERM) stops everything.
RUN READY"""


_devhost: subprocess.Popen[str] | None = None  # once it runs, a signal asks it to stop instead of interrupting


def _stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM (an IDE's stop button, `timeout`, `docker stop`, make passing it on) stops everything as
    Ctrl-C does; a repeated signal while stopping is ignored, so the clean-up itself is not cut short.

    Once the devhost runs, the signal only asks it to stop: its output then ends, and the clean-up runs in
    order from there. Raising here instead could land anywhere, even in the clean-up after the devhost had
    already stopped on the same signal (sent to the whole process group), and cut it short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _devhost is None:
        raise KeyboardInterrupt  # still starting: unwind what has started
    if _devhost.poll() is None:
        _devhost.send_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    global _devhost
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    parser = argparse.ArgumentParser(prog="python -m devhost.run", description=__doc__)
    parser.add_argument("--http-port", type=int, default=7071)
    parser.add_argument("--sandbox-port", type=int, default=8790)
    parser.add_argument("--azurite-ports", default="10000,10001,10002", help="blob,queue,table")
    args = parser.parse_args(argv)
    azurite_ports = tuple(int(p) for p in args.azurite_ports.split(","))
    taken = [p for p in (args.http_port, args.sandbox_port, *azurite_ports) if not _free(p)]
    if taken:
        print(
            f"make run: port {', '.join(map(str, taken))} is taken (another `make run`, Azurite or Core Tools?). "
            "Stop it, or pick other ports: make run RUN_ARGS='--http-port 7072 --sandbox-port 8791 "
            "--azurite-ports 10010,10011,10012'",
            file=sys.stderr,
        )
        return 2
    settings = ROOT / "local.settings.json"
    if not settings.exists():
        settings.write_text((ROOT / "local.settings.json.example").read_text())
        print("make run: created local.settings.json from local.settings.json.example")

    with contextlib.ExitStack() as stack:
        azurite = stack.enter_context(
            AzuriteProcess(ROOT / ".azurite", azurite_ports, stopped_last=True)  # type: ignore[arg-type]
        )
        sandbox = stack.enter_context(SandboxProcess(ROOT / ".sandbox", port=args.sandbox_port))
        # the real processes' addresses win over local.settings.json's defaults
        env = {**os.environ, **sandbox.env, "AzureWebJobsStorage": azurite.connection_string}
        devhost = _devhost = subprocess.Popen(
            [sys.executable, "-m", "devhost", "--port", str(args.http_port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        stack.callback(_stop, devhost)
        api = f"http://127.0.0.1:{args.http_port}"
        assert devhost.stdout is not None
        for line in devhost.stdout:
            print(line, end="")
            if line.startswith("DEVHOST READY"):
                print(banner(api, sandbox.url, azurite), flush=True)
                break
        else:
            print("make run: the devhost did not start; see its output above", file=sys.stderr)
            return 1
        for line in devhost.stdout:  # ends when the devhost stops (a signal asks it to)
            print(line, end="", flush=True)
        print("make run: stopping the devhost, the sandbox and Azurite ...", flush=True)
    print("make run: stopped.")
    return 0


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(45)  # longer than the devhost's own --shutdown-timeout (30 s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        for line in process.stdout:
            print(line, end="")
        process.stdout.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
