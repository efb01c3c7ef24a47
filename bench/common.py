"""What the benchmarks share: the local cloud (Azurite + the sandbox) with the app's settings pointing at it,
devhosts of the real app, medians, and the `BENCH <name> <value> <unit> | baseline ... | met ...` lines."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devhost.azurite import AzuriteProcess  # noqa: E402
from devhost.process import DevhostProcess  # noqa: E402
from sandbox.launcher import SandboxProcess  # noqa: E402
from sandbox.seed import DEFAULT_SEED  # noqa: E402

SENDER = "notifications@contoso.test"
SUPPORT = "support@contoso.test"


@dataclass
class LocalCloud:
    folder: Path
    azurite: AzuriteProcess
    sandbox: SandboxProcess

    @property
    def env(self) -> dict[str, str]:
        """The app's settings: the example's defaults, then the real addresses of this run's processes."""
        example = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
        return {
            **os.environ,
            **example,
            **self.sandbox.env,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "NOTIFY_CONFIG": str(ROOT / "config" / "notify.yaml"),
            "MAIL_BUDGET_MESSAGES_PER_MINUTE": "0",  # as the seed's Exchange limits: off for bulk benchmarks
            "MAIL_BUDGET_RECIPIENTS_PER_DAY": "0",
        }

    def wait_sent(self, prefix: str, count: int, timeout: float = 300) -> None:
        """Until `count` mails whose subject starts with `prefix` have been sent. It asks the sandbox only for
        the mails sent since its last look (3 ms): the whole list, read every half second, took the sandbox
        0.35-0.44 s to answer at 4,800 mails, and its event loop, so the Graph answers of the run being
        measured, waited meanwhile."""
        seen, since = 0, 0
        deadline = time.monotonic() + timeout
        while seen < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {seen} of {count} mails {prefix!r} were sent in {timeout:.0f} s")
            time.sleep(0.5)
            new = self.sandbox.sent(since)
            if new:
                since = int(new[-1]["seq"])
                seen += sum(1 for mail in new if str(mail["subject"]).startswith(prefix))

    def devhost(self, name: str, *args: str, settings: dict[str, str] | None = None) -> DevhostProcess:
        """A devhost of the real app, its output in `<name>.log`; `settings` override the app's."""
        return DevhostProcess(ROOT, {**self.env, **(settings or {})}, self.folder / f"{name}.log", *args)


@contextlib.contextmanager
def local_cloud() -> Iterator[LocalCloud]:
    """Azurite and the sandbox (default seed) on free ports, in a temporary folder, stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as folder:
        base = Path(folder)
        seed = base / "seed.json"  # Exchange's sending limits off: these benchmarks send mail in bulk
        seed.write_text(json.dumps({**json.loads(DEFAULT_SEED.read_text()), "exchange": {"enabled": False}}))
        with AzuriteProcess(base / "azurite") as azurite, SandboxProcess(base / "sandbox", seed) as sandbox:
            yield LocalCloud(base, azurite, sandbox)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def bench_line(
    name: str,
    value: float,
    unit: str,
    baseline: str = "",
    *,
    ratio: float | None = None,
    target: str = "",
    met: bool | None = None,
) -> None:
    """The figure's line, as `make bench`'s summary (`bench/summary.py`, into bench/RESULTS.md) reads it:
    `BENCH <name> <value> <unit> | baseline: ... | ratio: 2.50x | target: ... | met: yes`, the fields after
    the first only when given. `ratio` is the result over the same-run baseline."""
    fields = [f"BENCH {name} {_number(value)} {unit}"]
    if baseline:
        fields.append(f"baseline: {baseline}")
    if ratio is not None:
        fields.append(f"ratio: {ratio:.2f}x")
    if target:
        fields.append(f"target: {target}")
    if met is not None:
        fields.append(f"met: {'yes' if met else 'no'}")
    print(" | ".join(fields), flush=True)


def _number(value: float) -> str:
    return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f}"


def vm_peak_mb(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
