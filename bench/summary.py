"""`make bench`'s last step: run the benchmark scripts one after another, pass their output through (and into
`bench/results/last.log`), and end with ONE table of every `BENCH` line: figure, result, baseline, ratio,
target, met. The table is Markdown; it is also written to `bench/RESULTS.md` (tracked), headed with the run's
date (UTC) and commit, which `docs/benchmarks.md` quotes.

    python bench/summary.py cold_start intake_latency ...   # run these scripts, then the table
    python bench/summary.py --log bench/results/last.log    # the table of output saved earlier
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
LOG = BENCH / "results" / "last.log"
RESULTS = BENCH / "RESULTS.md"
# the log's first line, so a table made later from the log still names its run
RUN_LINE = re.compile(r"^== make bench, (?P<started>\d{4}-\d\d-\d\d \d\d:\d\d) UTC, commit (?P<commit>\S+)$")


@dataclass
class Figure:
    name: str
    result: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


def parse(line: str) -> Figure | None:
    """A `BENCH <name> <value> <unit> | key: value | ...` line as a figure; None for any other line."""
    if not line.startswith("BENCH "):
        return None
    head, *fields = line.strip().split(" | ")
    _, name, result = head.split(" ", 2)
    figure = Figure(name, result)
    for field in fields:
        key, _, value = field.partition(": ")
        if key in {"baseline", "ratio", "target", "met"}:
            setattr(figure, key, value)
    return figure


def table(figures: list[Figure]) -> str:
    rows = ["| figure | result | baseline, same run | ratio | target | met |", "|---|---|---|---|---|---|"]
    rows += [f"| {f.name} | {f.result} | {f.baseline} | {f.ratio} | {f.target} | {f.met or '-'} |" for f in figures]
    return "\n".join(rows)


def commit() -> str:
    """`git rev-parse --short HEAD` of the checkout measured; `unknown` outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH.parent, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def run_of(lines: list[str]) -> tuple[str, str]:
    """(start in UTC, commit) of the run whose output these lines are, from its first line."""
    found = RUN_LINE.match(lines[0].strip()) if lines else None
    return (found["started"], found["commit"]) if found else ("unknown date", "unknown")


def results(figures: list[Figure], started: str, revision: str, where: str) -> str:
    """bench/RESULTS.md: the summary table under the run's date and commit."""
    missed = [f.name for f in figures if f.met == "no"]
    return (
        "# Benchmark results\n\n"
        f"The last `make bench`: {started} UTC, commit {revision}, {where}.\n"
        "Written by `bench/summary.py`; what each figure means, how it is measured and what limits it:\n"
        "[docs/benchmarks.md](../docs/benchmarks.md).\n\n"
        f"{table(figures)}\n\n"
        f"{len(figures)} figures; targets missed: {', '.join(missed) or 'none'}\n"
    )


def machine() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, load average {load} at the end"


def run(scripts: list[str]) -> list[str]:
    """Each script's output, passed through as it comes; a failing script stops the run."""
    lines = [f"== make bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}\n"]
    LOG.parent.mkdir(exist_ok=True)
    with LOG.open("w") as log:
        print(lines[0], end="", flush=True)
        log.write(lines[0])
        for name in scripts:
            header = f"== bench/{name}.py"
            print(header, flush=True)
            log.write(header + "\n")
            child = subprocess.Popen(
                [sys.executable, str(BENCH / f"{name}.py")], stdout=subprocess.PIPE, text=True, bufsize=1
            )
            assert child.stdout is not None
            for line in child.stdout:
                print(line, end="", flush=True)
                log.write(line)
                lines.append(line)
            if child.wait():
                sys.exit(f"bench/{name}.py failed (exit status {child.returncode})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scripts", nargs="*", help="benchmark scripts to run, by name (bench/<name>.py)")
    parser.add_argument("--log", type=Path, help="make the table from this saved output instead of running")
    args = parser.parse_args()
    lines = args.log.read_text().splitlines() if args.log else run(args.scripts)
    figures = [f for f in map(parse, lines) if f is not None]
    started, revision = run_of(lines)
    print(f"\n== summary, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(table(figures))
    missed = [f.name for f in figures if f.met == "no"]
    print(f"\n{len(figures)} figures; targets missed: {', '.join(missed) or 'none'}")
    RESULTS.write_text(results(figures, started, revision, machine()))
    print(f"written to {RESULTS.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    main()
