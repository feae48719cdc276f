"""Files of every kind for the tests that hold the header pass's fast paths to pydicom."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability.corpus import build

from helpers import SAMPLES
from medseq.components import synth


@pytest.fixture(scope="session")
def corpus_files(tmp_path_factory, pydicom_files) -> list[Path]:
    """pydicom's real test files, the samples, synthetic studies in every transfer syntax
    synth writes (classic and enhanced), and the fuzz corpus of broken files."""
    root = tmp_path_factory.mktemp("corpus")
    synth.run("cine_ef", 8, seed=5, out=root / "synth", small=True)
    fuzz = build(root / "fuzz", per_source=1)
    return [p for base in (pydicom_files, SAMPLES, root / "synth" / "dicom", fuzz.root)
            for p in sorted(base.rglob("*")) if p.is_file() and p.stat().st_size < 20 << 20]
