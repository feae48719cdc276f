"""Broken input: a seeded corpus of 600+ mutated DICOM files among good series goes
through the real ingest job. The job finishes, the untouched series convert to the
same bytes as without the mutants, every file is accounted for, and every rejection
names what was wrong."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import tensorflow as tf
from reliability.corpus import Corpus, build

from helpers import IN_PROCESS, KEY, convert
from medseq.components.io.examples import split_files
from medseq.components.preprocessing import reasons
from medseq.pipeline import features as F
from medseq.pipeline.config import PixelPhiConfig, load_config

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _config(root: Path, labels: Path, **ingest_changes: object):
    config = load_config().on_input(str(root), str(labels))
    # One-file series are fine here: most mutants are a series of their own, and must reach the decoder,
    # pydicom's secondary captures (most of its compressed files) too.
    ingest_changes = {"pixel_phi": PixelPhiConfig(secondary_capture="keep"), **ingest_changes}
    return dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, min_frames=1),
                               ingest=dataclasses.replace(config.ingest, **ingest_changes))


def records_by_series(out: Path) -> dict[str, bytes]:
    files = [f for split in F.SPLITS for f in split_files(out, split)]
    found = {}
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feature = tf.train.Example.FromString(raw.numpy()).features.feature
        found[feature[F.SERIES_KEY].bytes_list.value[0].decode()] = raw.numpy()
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def fuzzed(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzzed")
    convert(_config(corpus.root, corpus.labels), out, key=KEY, beam_args=IN_PROCESS)
    return out


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    convert(_config(corpus.clean_root, corpus.clean_labels), out, key=KEY, beam_args=IN_PROCESS)
    return out


def test_the_corpus_is_large_and_mixes_every_mutation(corpus):
    assert len(corpus.mutants) >= 500 and len(corpus.victim_series) >= 4
    kinds = Counter(p.stem.rsplit("-", 1)[0] for p in corpus.mutants if p.parent.parent.name == "mutants")
    assert len(kinds) == 7 and min(kinds.values()) >= 60


def test_every_input_file_is_accounted_for(corpus, fuzzed):
    qc = json.loads((fuzzed / F.QC_FILE).read_text())
    inputs = sum(1 for p in corpus.root.rglob("*") if p.is_file())
    assert qc["files"]["in_records"] + qc["files"]["rejected"] == inputs
    rows = [json.loads(line) for line in (fuzzed / F.REJECTED_FILE).read_text().splitlines()]
    assert sum(r["files"] for r in rows) == qc["files"]["rejected"]


def test_untouched_series_convert_to_the_same_bytes_as_a_clean_run(corpus, fuzzed, clean):
    before, after = records_by_series(clean), records_by_series(fuzzed)
    victims = {k for k in before if k not in after}
    assert len(victims) <= len(corpus.victim_series)  # only a series holding a mutant may be missing
    assert len(before) - len(victims) >= 10
    for key in before.keys() - victims:
        assert after[key] == before[key]


def test_every_rejection_names_what_was_wrong(corpus, fuzzed):
    rows = [json.loads(line) for line in (fuzzed / F.REJECTED_FILE).read_text().splitlines()]
    assert {r["reason"] for r in rows} <= set(reasons.ALL)
    unexpected = [r for r in rows if r["reason"] == reasons.PROCESSING_ERROR]
    assert len(unexpected) <= 0.01 * len(corpus.mutants), unexpected[:3]
    mutant_rows = [r for r in rows if r["path"].startswith("mutants/")]
    by_reason = Counter(r["reason"] for r in mutant_rows)
    assert {"truncated", "decode_error", "unreadable"} <= set(by_reason), by_reason
    for row in mutant_rows:
        assert len(row["message"]) > 30 and "unexpected" not in row["message"], row


def test_a_decode_time_limit_rejects_slow_files(corpus, tmp_path):
    config = _config(corpus.clean_root, corpus.clean_labels, decode_timeout_s=1e-9)
    out = convert(config, tmp_path / "out", key=KEY, beam_args=IN_PROCESS)
    rows = [json.loads(line) for line in (tmp_path / "out" / F.REJECTED_FILE).read_text().splitlines()]
    assert sum(out.records.values()) == 0
    assert {r["reason"] for r in rows if r["reason"] != "unlabeled"} >= {reasons.DECODE_TIMEOUT}
    assert any("expected at most 1e-09 s (ingest.decode_timeout_s)" in r["message"] for r in rows)


RSS_SCRIPT = """
import dataclasses, json, resource, sys
from medseq.components import ingest
from medseq.pipeline.config import PixelPhiConfig, load_config
config = load_config().on_input(sys.argv[1], sys.argv[2])
config = dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, min_frames=1))
ingest.run(config, ingest.IngestInputs(sys.argv[1], sys.argv[2], b"k" * 32), sys.argv[3], ["--runner=DirectRunner"])
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _peak_rss_mb(root: Path, labels: Path, out: Path) -> float:
    result = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(root), str(labels), str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def test_no_declared_length_makes_the_reader_allocate_what_the_file_does_not_hold(corpus, tmp_path):
    """Peak RSS of one process converting the corpus against the same without the
    mutants (README figure): the ~4 GB lengths the `huge_length` mutants declare are
    never allocated."""
    clean = _peak_rss_mb(corpus.clean_root, corpus.clean_labels, tmp_path / "clean")
    fuzzed = _peak_rss_mb(corpus.root, corpus.labels, tmp_path / "fuzzed")
    print(f"peak RSS, one process: {fuzzed:.0f} MB on the fuzz corpus, {clean:.0f} MB without its mutants")
    assert fuzzed <= 1.2 * clean
