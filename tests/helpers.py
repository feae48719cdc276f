"""Constants shared by the tests (importable as `helpers`: pytest.ini puts tests/ on the path)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_samples"
KEY = b"medseq-test-key-0123456789abcdef"
IN_PROCESS = ["--runner=DirectRunner"]  # one process: fastest for tiny inputs
ARTIFACTS = REPO / "runs" / "test-artifacts"  # screenshots of rendered pages (runs/ is git-ignored)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def render_in_chromium(page: Path, screenshot: Path, height: int = 2200) -> str:
    """The DOM of `page` as headless Chromium renders it, and a screenshot of it."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={screenshot.parent / 'chromium-profile'}", f"--window-size=1200,{height}"]
    url = page.resolve().as_uri()
    subprocess.run([_chromium(), *flags, f"--screenshot={screenshot}", url], check=True, capture_output=True,
                   timeout=120)
    return subprocess.run([_chromium(), *flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                          timeout=120).stdout
