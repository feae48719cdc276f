"""The code stays as STYLE.md asks: ruff clean, fully typed (mypy, disallow_untyped_defs)."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "pipeline", "components", "tests", "benchmarks"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_mypy_is_clean():
    args = ["--config-file", "pyproject.toml", "--explicit-package-bases", "pipeline", "components"]
    result = subprocess.run([sys.executable, "-m", "mypy", *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
