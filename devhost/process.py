"""A `python -m devhost` child process (tests, benchmarks): started on a free port, its output in a file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from .azurite import free_port

ROOT = Path(__file__).resolve().parent.parent


class DevhostProcess:
    """Starts the devhost for the app in `app_dir` and waits for `DEVHOST READY`; `stop` sends a signal."""

    def __init__(self, app_dir: Path, env: dict[str, str], log: Path, *args: str) -> None:
        self.port = free_port()
        self.log = log
        self.output = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devhost", "--port", str(self.port), "--app-dir", str(app_dir), *args],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while "DEVHOST READY" not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError("devhost did not start:\n" + log.read_text())
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGINT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(30)
        self.output.close()
        return self.process.returncode
