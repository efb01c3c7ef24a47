"""Start Azurite (the npm package in node_modules) on free loopback ports, and stop it."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class AzuriteProcess:
    """Blob, queue and table services of one Azurite process; `connection_string` points at them."""

    def __init__(
        self, data_dir: Path, ports: tuple[int, int, int] | None = None, *, stopped_last: bool = False
    ) -> None:
        """`stopped_last`: Azurite gets its own process group, so a signal to the terminal's group (Ctrl-C,
        `timeout`) leaves it to its parent to stop, after the devhost has finished with Storage."""
        self.data_dir = data_dir
        self.blob_port, self.queue_port, self.table_port = ports or (free_port(), free_port(), free_port())
        self.stopped_last = stopped_last
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        base = "http://127.0.0.1:{}/devstoreaccount1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base.format(self.blob_port)};QueueEndpoint={base.format(self.queue_port)};"
            f"TableEndpoint={base.format(self.table_port)};"
        )

    def start(self, timeout: float = 30) -> AzuriteProcess:
        binary = ROOT / "node_modules" / ".bin" / "azurite"
        if not binary.exists():
            raise RuntimeError("Azurite is not installed: run `npm ci` (make does it for you)")
        if shutil.which("node") is None:
            raise RuntimeError("Azurite needs Node.js: install node 18+ and npm")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(binary),
            "--silent",
            "--skipApiVersionCheck",
            "--disableTelemetry",  # else it tries to send telemetry on stop, offline, and lingers 10 s or more
            "--loose",
            "--location",
            str(self.data_dir),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.blob_port),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(self.queue_port),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(self.table_port),
        ]
        log = (self.data_dir / "azurite.log").open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=_own_group_dying_with_parent if self.stopped_last else None,
        )
        deadline = time.monotonic() + timeout
        for port in (self.blob_port, self.queue_port, self.table_port):
            while not _listening(port):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Azurite did not start; see {self.data_dir / 'azurite.log'}")
                time.sleep(0.05)
        return self

    def stop(self, grace: float = 10) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (Azurite flushes its state on SIGTERM and, with its
        telemetry off, exits at once)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> AzuriteProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _own_group_dying_with_parent() -> None:
    """In the child before exec: a process group of its own, and SIGTERM should its parent die unannounced."""
    os.setpgrp()
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
