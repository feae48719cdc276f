"""Validate on real ingest output: clean records pass, planted faults are reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import IN_PROCESS
from medseq.components.io.records import write_tfrecords
from medseq.components.validate import validate
from medseq.components.validate.schema import load_schema
from medseq.pipeline import features as F


def copy_records(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "records"
    shutil.copytree(src, dst)
    return dst


def records(folder: Path) -> list[bytes]:
    files = sorted(str(p) for p in folder.glob("*.tfrecord.gz"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def rewrite(folder: Path, items: list[bytes]) -> None:
    for p in folder.glob("*.tfrecord.gz"):
        p.unlink()
    with open(folder / "planted-00000-of-00001.tfrecord.gz", "wb") as f:
        write_tfrecords(f, items)


def kinds(result) -> set[str]:
    return {a["kind"] for a in result.anomalies}


def test_clean_records_pass_and_stats_are_complete(cine_records, tmp_path):
    result = validate(str(cine_records), tmp_path / "v", max_label_linf=0.35, beam_args=IN_PROCESS)
    assert result.anomalies == []
    train = result.stats["train"]
    assert train["records"] == 23 and set(train["features"]) == set(F.ALL_FEATURES)
    assert train["shapes"] == {"16x64x64x1": 23} and train["dtypes"] == {"uint8": 23}
    assert 0 < train["pixels"]["mean"] < 1 and train["pixels"]["std"] > 0
    assert len(train["pixels_by_manufacturer"]) >= 2 and train["pixels_by_site"]
    assert (tmp_path / "v" / F.STATS_FILE).exists() and (tmp_path / "v" / F.ANOMALIES_FILE).exists()


def test_patient_in_two_splits_is_leakage(cine_records, tmp_path):
    planted = copy_records(cine_records, tmp_path)
    shutil.copy(next((planted / "train").glob("*.gz")), planted / "eval" / "leak-00000-of-00001.tfrecord.gz")
    assert "leakage" in kinds(validate(str(planted), tmp_path / "v", beam_args=IN_PROCESS))


def test_empty_split_and_missing_class(cine_records, tmp_path):
    planted = copy_records(cine_records, tmp_path)
    for p in (planted / "test").glob("*.gz"):
        p.unlink()
    only_one_class = [r for r in records(planted / "eval")
                      if tf.train.Example.FromString(r).features.feature[F.LABEL].int64_list.value[0] == 1]
    rewrite(planted / "eval", only_one_class)
    found = kinds(validate(str(planted), tmp_path / "v", beam_args=IN_PROCESS))
    assert {"empty_split", "class_missing_in_eval"} <= found


def test_label_skew_beyond_the_bound(cine_records, tmp_path):
    found = kinds(validate(str(cine_records), tmp_path / "v", max_label_linf=0.0, beam_args=IN_PROCESS))
    assert found == {"label_skew"}


def test_schema_violations_are_reported(cine_records, tmp_path):
    planted = copy_records(cine_records, tmp_path)
    items = records(planted / "train")
    bad = tf.train.Example.FromString(items[0])
    bad.features.feature[F.LABEL].int64_list.value[0] = 7
    del bad.features.feature[F.SITE]
    bad.features.feature[F.MODALITY].bytes_list.value[0] = b"XX"
    bad.features.feature["surprise"].float_list.value.append(1.0)
    rewrite(planted / "train", [*items[1:], bad.SerializeToString()])
    result = validate(str(planted), tmp_path / "v", beam_args=IN_PROCESS)
    messages = " | ".join(a["message"] for a in result.anomalies if a["kind"] == "schema")
    for expected in ("label(s) 7 outside the 2 classes of qc.json", "'site' missing", "'modality' unknown value",
                     "'surprise' unexpected feature"):
        assert expected in messages


def test_infer_schema_round_trips(cine_records, tmp_path):
    result = validate(str(cine_records), tmp_path / "v", infer=True, max_label_linf=0.35, beam_args=IN_PROCESS)
    inferred = load_schema(result.schema_path)
    names = {f.name for f in inferred.feature}
    assert names == set(F.ALL_FEATURES)
    again = validate(str(cine_records), tmp_path / "v2", schema_path=result.schema_path, max_label_linf=0.35,
                     beam_args=IN_PROCESS)
    assert again.anomalies == []


def test_shipped_schema_covers_the_record_contract():
    schema = load_schema()
    assert {f.name for f in schema.feature} == set(F.CONTRACT_FEATURES)


@pytest.mark.slow
def test_cli_exit_status_is_non_zero_on_anomalies(cine_records, tmp_path):
    from medseq.pipeline import cli

    assert cli.main(["validate", "--examples", str(cine_records), "--out", str(tmp_path / "ok"),
                     "--runner=DirectRunner"]) == 0
    planted = copy_records(cine_records, tmp_path)
    for p in (planted / "test").glob("*.gz"):
        p.unlink()
    assert cli.main(["validate", "--examples", str(planted), "--out", str(tmp_path / "bad"),
                     "--runner=DirectRunner"]) == 1


def test_distances_are_tfdv_s():
    from medseq.components.validate.executor import _shares, distance

    def between(comparator, baseline, current):
        return distance(comparator, *_shares(baseline, current)[1:])

    assert between("jensen_shannon_divergence", {"a": 5}, {"b": 3}) == pytest.approx(1.0)
    assert between("jensen_shannon_divergence", {"a": 2, "b": 2}, {"a": 5, "b": 5}) == pytest.approx(0.0)
    assert between("infinity_norm", {"a": 3, "b": 1}, {"a": 1, "b": 1}) == pytest.approx(0.25)


def test_a_new_batch_is_checked_for_drift_from_the_training_statistics(synthetic_records, tmp_path):
    from medseq.pipeline import cli

    baseline = validate(str(synthetic_records), tmp_path / "baseline", beam_args=IN_PROCESS)
    assert "histograms" in baseline.stats["train"]
    same = validate(str(synthetic_records), tmp_path / "same", beam_args=IN_PROCESS,
                    baseline=str(tmp_path / "baseline"))
    assert same.anomalies == []
    # Another vendor's scanner: its name, and an intensity profile brightened (gamma 0.5).
    batch = tmp_path / "batch"
    shutil.copytree(synthetic_records, batch)
    for split in F.SPLITS:
        moved = []
        for raw in records(batch / split):
            example = tf.train.Example.FromString(raw)
            feature = example.features.feature
            pixels = np.frombuffer(feature[F.FRAMES].bytes_list.value[0], np.uint8)
            feature[F.FRAMES].bytes_list.value[0] = np.round(np.sqrt(pixels / 255.0) * 255.0).astype(np.uint8).tobytes()
            feature[F.MANUFACTURER].bytes_list.value[0] = b"ACME Imaging"
            moved.append(example.SerializeToString())
        rewrite(batch / split, moved)
    drifted = validate(str(batch), tmp_path / "drifted", beam_args=IN_PROCESS, baseline=str(tmp_path / "baseline"))
    messages = {a["message"].split("'")[1]: a["message"] for a in drifted.anomalies if a["kind"] == "drift"}
    assert set(messages) == {F.FRAMES, F.MANUFACTURER}, drifted.anomalies
    assert "'ACME Imaging' 0% -> 100% of the records" in messages[F.MANUFACTURER]
    assert {a["kind"] for a in drifted.anomalies} == {"drift"}
    # The command line: exit 1 on drift, and a one-line error for a baseline that is not one.
    assert cli.main(["validate", "--examples", str(batch), "--out", str(tmp_path / "cli"), "--baseline",
                     str(tmp_path / "baseline"), "--runner=DirectRunner"]) == 1
    assert cli.main(["validate", "--examples", str(batch), "--out", str(tmp_path / "cli2"), "--baseline",
                     str(tmp_path / "nothing"), "--runner=DirectRunner"]) == 2
