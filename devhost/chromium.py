"""Headless Chromium (Debian's `chromium`) for the local tools that look at rendered mails: the pictures in
docs/ (`docs/screenshot.py`) and the layout test of the mail templates (`tests/test_templating.py`).

Each call runs a fresh browser with its own profile and its network features off, so nothing leaves the
machine; the page is a local file.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",  # the viewport is the window's full width, as on a phone
)
TIMEOUT = 90  # seconds for one page; a loaded 2-core machine starts Chromium in a few


def browser() -> str | None:
    """The Chromium executable, or None when it is not installed (`make debian-tools` installs it)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(html: str, width: int, height: int, *action: str) -> str:
    executable = browser()
    if executable is None:
        raise RuntimeError("Debian's chromium is needed: make debian-tools (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "mail.html"
        page.write_text(html, encoding="utf-8")
        done = subprocess.run(
            [
                executable,
                *FLAGS,
                f"--user-data-dir={folder}/profile",
                f"--window-size={width},{height}",
                *action,
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    return done.stdout


def dump_dom(html: str, width: int, height: int = 900, *, dark: bool = False) -> str:
    """The page's DOM after load (and after its scripts ran), in a window `width` CSS pixels wide; `dark`: with
    the system in dark mode (`prefers-color-scheme: dark`)."""
    return _run(html, width, height, "--dump-dom", *(["--force-dark-mode"] if dark else []))


def screenshot(html: str, target: Path, width: int, height: int) -> None:
    """A PNG of the page's first `height` pixels in a window `width` pixels wide."""
    _run(html, width, height, f"--screenshot={target}")
