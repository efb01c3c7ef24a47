"""Start and drive a sandbox in a child process: for tests, benchmarks and `make run`."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

_ORIGIN = re.compile(r"Graph sandbox on (https://\S+) ")


class SandboxProcess:
    """A running `python -m sandbox`, its client environment, and a client for its control API."""

    def __init__(self, data_dir: Path, seed: Path | None = None, port: int = 0, startup_timeout: float = 15) -> None:
        self.data_dir = data_dir
        self.seed = seed
        self.port = port
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.env: dict[str, str] = {}
        self.control: httpx.Client | None = None
        self.startup_seconds = 0.0
        self.banner = ""

    def start(self) -> SandboxProcess:
        command = [sys.executable, "-m", "sandbox", "--port", str(self.port), "--data", str(self.data_dir)]
        if self.seed:
            command += ["--seed", str(self.seed)]
        started = time.perf_counter()
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            command,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines: list[str] = []
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("sandbox exited before it was ready:\n" + "".join(lines))
            lines.append(line)
            if line.strip() == "SANDBOX READY":
                break
            if time.perf_counter() - started > self.startup_timeout:
                self.stop()
                raise RuntimeError("sandbox did not get ready in time:\n" + "".join(lines))
        self.startup_seconds = time.perf_counter() - started
        self.banner = "".join(lines)
        match = _ORIGIN.search(self.banner)
        assert match, self.banner
        self.url = match.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])  # a restart keeps the port
        self.env = json.loads((self.data_dir / "env.json").read_text())
        self.control = httpx.Client(
            base_url=self.url, timeout=60, verify=ssl.create_default_context(cafile=self.env["SSL_CERT_FILE"])
        )
        return self

    def stop(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- control API --------------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        assert self.control is not None, "sandbox is not running"
        return self.control

    def token(self, client_id: str, secret: str, scope: str = "https://graph.microsoft.com/.default") -> str:
        """An access token from the sandbox's token endpoint (client credentials with a secret)."""
        answer = self._client().post(
            f"/{self.env['GRAPH_TENANT_ID']}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": scope},
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])

    def reset(self, seed: dict[str, Any] | None = None) -> None:
        response = self._client().post("/_sandbox/reset", json=seed) if seed else self._client().post("/_sandbox/reset")
        response.raise_for_status()

    def set_faults(self, **faults: Any) -> None:
        self._client().put("/_sandbox/faults", json=faults).raise_for_status()

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self._client().get("/_sandbox/requests", params={"since": since}).json()["value"])

    def last_seq(self) -> int:
        return int(self._client().get("/_sandbox/requests", params={"since": 2**62}).json()["lastSeq"])

    def sent(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self._client().get("/_sandbox/sent", params={"since": since}).json()["value"])

    def deliver(self, upn: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = self._client().post(f"/_sandbox/users/{upn}/messages", json=messages)
        response.raise_for_status()
        return list(response.json()["value"])

    def mailbox(self, upn: str, folder: str | None = None) -> list[dict[str, Any]]:
        params = {"folder": folder} if folder else {}
        response = self._client().get(f"/_sandbox/users/{upn}/messages", params=params)
        response.raise_for_status()
        return list(response.json()["value"])
