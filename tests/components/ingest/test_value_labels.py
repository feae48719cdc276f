"""labels.csv for a value target (train.target: value): a number per series from the
column train.value.column. Bad numbers reject their series by name and the rest
converts; a missing column or one series given two numbers is one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import EF, KEY, SAMPLES, convert, medseq, one_line, sample_uids, write_values
from medseq.components.ingest.labels import read_labels
from medseq.components.io.examples import record_spec, split_files
from medseq.pipeline import features as F
from medseq.pipeline.errors import InputError


def test_numbers_are_read_and_bad_ones_are_named_per_series(tmp_path):
    uids = sample_uids()
    table = read_labels(write_values(tmp_path / "labels.csv", [(uids[0], "55.5"), (uids[1], " 31 "), (uids[2], "abc"),
                                                        (uids[3], "nan"), (uids[4], "150"), (uids[5], "-inf")]),
                        "value", EF)
    assert table.target == "value" and table.classes == ()
    assert table.labels == {uids[0]: repr(55.5), uids[1]: repr(31.0)}
    assert {uid: reason for uid, (reason, _) in table.bad.items()} == {
        uids[2]: "bad_value", uids[3]: "bad_value", uids[4]: "value_out_of_range", uids[5]: "bad_value"}
    assert "outside train.value.range [0, 100]" in table.bad[uids[4]][1]
    assert table.rows == 6


def test_a_missing_column_and_two_numbers_for_one_series_are_one_line(tmp_path):
    uids = sample_uids()
    with pytest.raises(InputError, match=r"expected a CSV header with a column ef \(train.value.column\)"):
        read_labels(write_values(tmp_path / "a.csv", [(uids[0], "normal")], "series_instance_uid,label"), "value", EF)
    with pytest.raises(InputError, match=r"lines 2 and 3 give one series two labels") as caught:
        read_labels(write_values(tmp_path / "b.csv", [(uids[0], "50"), (uids[0], "60")]), "value", EF)
    assert uids[0] not in str(caught.value)  # a UID identifies: never in a message
    with pytest.raises(InputError, match="no labeled rows"):
        read_labels(write_values(tmp_path / "c.csv", [(uids[0], "x")]), "value", EF)
    # A class labels file read for a value is not silently taken as one.
    result = medseq("convert", "--input", str(SAMPLES / "cine_ef" / "dicom"), "--labels",
                    str(SAMPLES / "cine_ef" / "labels.csv"), "--out", str(tmp_path / "out"),
                    "--config", _value_config(tmp_path))
    assert "expected a CSV header with a column ef" in one_line(result)


def _value_config(tmp_path: Path) -> str:
    path = tmp_path / "value.yaml"
    path.write_text("train: {target: value, value: {column: ef, units: '%', range: [0, 100]}}\n")
    return str(path)


def test_value_records_carry_the_number_and_bad_rows_are_rejected_while_the_rest_converts(value_records):
    tmp_path, values, out, _ = value_records
    uids = sample_uids()
    qc = json.loads((tmp_path / "records" / F.QC_FILE).read_text())
    assert qc["target"] == {"kind": "value", "column": "ef", "units": "%", "range": [0.0, 100.0]}
    assert qc["classes"] == [] and qc["rejected"]["bad_value"] == 1 and qc["rejected"]["value_out_of_range"] == 1
    assert sum(out.records.values()) == len(uids) - 2
    rejected = [json.loads(line) for line in (tmp_path / "records" / F.REJECTED_FILE).read_text().splitlines()]
    assert {r["reason"] for r in rejected} >= {"bad_value", "value_out_of_range"}
    assert not any(uid in line for uid in uids for line in (tmp_path / "records" / F.REJECTED_FILE).read_text()
                   .splitlines())
    # Every record holds its series' number (float32) and no class label.
    found = []
    for split in F.SPLITS:
        for raw in tf.data.TFRecordDataset(split_files(tmp_path / "records", split), compression_type="GZIP"):
            example = tf.train.Example.FromString(raw.numpy())
            assert F.LABEL not in example.features.feature
            found.append(example.features.feature[F.TARGET].float_list.value[0])
        stats = qc["targets"][split]
        assert stats["count"] == qc["records"][split]
    expected = sorted(np.float32(v) for uid, v in values.items() if uid not in uids[:2])
    assert sorted(np.float32(v) for v in found) == expected
    spec = record_spec(tmp_path / "records")
    assert spec.is_value and spec.units == "%" and spec.value["std"] > 0
    assert abs(spec.value["mean"] - qc["targets"]["train"]["mean"]) < 1e-9


def test_a_value_split_validates_against_the_schema_and_its_skew_is_checked(tmp_path, config):
    from medseq.components.validate import validate

    uids = sample_uids()
    labels = write_values(tmp_path / "labels.csv", [(uid, str(30.0 + i)) for i, uid in enumerate(uids)])
    value_config = dataclasses.replace(config.on_input(config.input, labels),
                                       train=dataclasses.replace(config.train, target="value", value=EF))
    convert(value_config, tmp_path / "records", key=KEY)
    out = validate(str(tmp_path / "records"), tmp_path / "validate", max_label_linf=1.0, max_target_shift=100.0)
    assert [a for a in out.anomalies if a["kind"] == "schema"] == []
    assert out.stats["train"]["target"]["count"] == out.stats["train"]["records"]
    strict = validate(str(tmp_path / "records"), tmp_path / "strict", max_target_shift=0.0)
    assert [a["kind"] for a in strict.anomalies] == ["target_skew"]


def test_every_model_variant_trains_on_a_value_and_a_class_config_is_refused_in_one_line(value_records):
    from medseq.components import train
    from medseq.pipeline.errors import ConfigError

    tmp_path, _, _, value_config = value_records
    records = tmp_path / "records"
    with pytest.raises(ConfigError, match=r"train.target: class, but the records .* answer a value"):
        train.train(records, tmp_path / "wrong", dataclasses.replace(value_config.train, target="class"))
    small = dataclasses.replace(value_config.train, epochs=2, conv_filters=(4,), lstm_units=4)
    for name, variant in (("lstm", small), ("mean_pool", dataclasses.replace(small, sequence_model="mean_pool",
                                                                             frame_difference=False))):
        out = train.train(records, tmp_path / name, variant)
        history = json.loads((tmp_path / name / "history.json").read_text())
        assert {"mae", "eval_mae", "eval_rmse", "eval_r2"} <= set(history[-1]), name
        assert out.best_epoch >= 1
    # A killed job resumes from its checkpoint with the same weights: the same code path as for classes.
    resumed = train.train(records, tmp_path / "lstm", dataclasses.replace(small, epochs=3))
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 1
