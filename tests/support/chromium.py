"""Headless Debian chromium for checking web pages (the DOM and a screenshot),
with the flags the project uses (no sandbox, no GPU, no network services) and
a fresh profile per call. scripts/setup.sh installs the `chromium` package."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def binary() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is not installed (scripts/setup.sh installs Debian's chromium package)"
    return found


def _run(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="xg-chromium-") as profile:
        return subprocess.run([binary(), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, timeout=timeout, check=True)


def dump_dom(page: Path) -> str:
    """The DOM after chromium loaded and rendered the page."""
    return _run(["--dump-dom", page.resolve().as_uri()]).stdout.decode("utf-8", "replace")


def screenshot(page: Path, png: Path, size: str = "1200,1600") -> bytes:
    _run([f"--screenshot={png}", f"--window-size={size}", page.resolve().as_uri()])
    return png.read_bytes()
