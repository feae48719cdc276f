"""Constants shared by the tests (importable as `helpers`: pytest.ini puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_samples"
KEY = b"medseq-test-key-0123456789abcdef"
IN_PROCESS = ["--runner=DirectRunner"]  # one process: fastest for tiny inputs
