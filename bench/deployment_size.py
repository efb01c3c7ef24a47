"""Deployment size: what `requirements.txt` installs (as Azure's build does, into a folder of its own), in all
and by top-level package, largest first. Baseline in the same run: `azure-functions` alone.

The issue quotes msgraph-sdk at about 390 MB installed (msgraph-sdk-python issue 939); this shows where the
app stands and what dominates.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from common import ROOT, bench_line


def _install(target: Path, *requirements: str) -> None:
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--target", str(target), *requirements], check=True, capture_output=True, timeout=900)


def _sizes(folder: Path) -> Counter[str]:
    """Bytes per top-level entry (package, module, or dist-info folded into its package)."""
    sizes: Counter[str] = Counter()
    for path in folder.rglob("*"):
        if path.is_file():
            top = path.relative_to(folder).parts[0]
            name = top.split("-")[0] if top.endswith((".dist-info", ".data")) else top.removesuffix(".py")
            sizes[name.lower()] += path.stat().st_size
    return sizes


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="notifier-size-") as folder:
        app, base = Path(folder) / "app", Path(folder) / "base"
        _install(app, "-r", str(ROOT / "requirements.txt"))
        pin = next(
            line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("azure-functions")
        )
        _install(base, pin.split()[0])
        sizes, base_sizes = _sizes(app), _sizes(base)
    total, base_total = sum(sizes.values()) / 2**20, sum(base_sizes.values()) / 2**20
    print(f"requirements.txt installed: {total:.0f} MB in {len(sizes)} top-level entries")
    for name, size in sizes.most_common(10):
        print(f"  {name:28} {size / 2**20:7.1f} MB")
    bench_line(
        "deployment_size",
        total,
        "MB",
        f"azure-functions alone {base_total:.1f} MB",
        ratio=total / base_total,
        target="reported",
    )


if __name__ == "__main__":
    main()
