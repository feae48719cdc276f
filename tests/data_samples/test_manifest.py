"""The committed sample set is exactly what its manifest says."""

from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"


def test_sample_files_match_the_manifest():
    entries = {}
    for line in (SAMPLES / "MANIFEST.sha256").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        entries[name] = digest
    on_disk = {str(p.relative_to(SAMPLES)) for task in ("cine_ef", "ct_nodule")
               for p in (SAMPLES / task).rglob("*") if p.is_file()}
    assert on_disk == set(entries), "files added or missing without a manifest update"
    for name, digest in entries.items():
        assert hashlib.sha256((SAMPLES / name).read_bytes()).hexdigest() == digest, name


def test_sample_set_stays_small():
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 10 * 2**20
