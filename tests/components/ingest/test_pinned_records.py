"""The records of `data_samples/` are pinned by digest: a speed-up of ingest may change
how fast they are written, never one byte of what is written.

The pins change only with a deliberate change of the preprocessing, the record contract
or the record order; such a change updates them in the same commit and says why:

    python tests/components/ingest/test_pinned_records.py --update
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `helpers` when run as a script

from helpers import IN_PROCESS, KEY, SAMPLES

PINS = Path(__file__).with_name("pinned_records.json")
SETS = ("cine_ef", "ct_nodule")


def record_digests(out: Path) -> dict[str, list[str]]:
    """{split/shard file: SHA-256 of each record in file order}, plus the dead letters."""
    digests: dict[str, list[str]] = {}
    for shard in sorted(out.glob("*/*.tfrecord.gz")):
        data, found, at = gzip.decompress(shard.read_bytes()), [], 0
        while at < len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            found.append(hashlib.sha256(data[at + 12:at + 12 + length]).hexdigest())
            at += 12 + length + 4
        digests[f"{shard.parent.name}/{shard.name}"] = found
    digests["rejected.jsonl"] = [hashlib.sha256((out / "rejected.jsonl").read_bytes()).hexdigest()]
    return digests


def convert(name: str, out: Path, beam_args: list[str]) -> dict[str, list[str]]:
    from medseq.components import ingest
    from medseq.pipeline.config import load_config

    config = load_config().on_input(str(SAMPLES / name / "dicom"), str(SAMPLES / name / "labels.csv"))
    ingest.run(config, ingest.IngestInputs(config.input, config.labels, KEY), out, beam_args)
    return record_digests(out)


@pytest.mark.parametrize("name", SETS)
def test_records_of_the_samples_are_byte_identical_to_the_pins(tmp_path, name):
    pinned = json.loads(PINS.read_text())[name]
    assert convert(name, tmp_path / "out", IN_PROCESS) == pinned


def test_the_multi_process_runner_writes_the_same_bytes(tmp_path):
    """The default local runner for large inputs (one worker process per core)."""
    from medseq.components.io.beam import FN_API_RUNNER

    args = [f"--runner={FN_API_RUNNER}", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert convert("cine_ef", tmp_path / "out", args) == json.loads(PINS.read_text())["cine_ef"]


@pytest.mark.parametrize("name", SETS)
def test_the_in_process_path_writes_the_same_bytes(tmp_path, name):
    """No Beam option and a small local input: the DoFns called without a pipeline."""
    assert convert(name, tmp_path / "out", []) == json.loads(PINS.read_text())[name]


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    with tempfile.TemporaryDirectory() as tmp:
        PINS.write_text(json.dumps({name: convert(name, Path(tmp) / name, IN_PROCESS) for name in SETS},
                                   indent=1, sort_keys=True) + "\n")
    print(f"written {PINS}")
