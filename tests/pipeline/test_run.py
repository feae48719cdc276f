"""`medseq run` end to end: every stage on the sample set, then again against the served model."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import SAMPLES
from medseq.pipeline import cli
from medseq.pipeline import features as F

FAST = {
    "input": str(SAMPLES / "cine_ef" / "dicom"),
    "labels": str(SAMPLES / "cine_ef" / "labels.csv"),
    "ingest": {"split": {"train": 0.6, "eval": 0.2, "test": 0.2}},
    "preprocess": {"frames": 8, "height": 32, "width": 32, "min_frames": 2,
                   "windows": {"MR": ["percentile"], "default": ["header"]}},
    "validate": {"max_label_linf": 0.5},
    "train": {"epochs": 1, "conv_filters": [4], "lstm_units": 4},
}


@pytest.mark.slow
def test_run_goes_through_all_stages_and_pushes_when_blessed(tmp_path, capsys):
    eval_config = tmp_path / "eval.pbtxt"
    eval_config.write_text(
        'model_specs { label_key: "label" prediction_key: "probability" }\nslicing_specs {}\n'
        'metrics_specs { metrics { class_name: "AUC" threshold { value_threshold { lower_bound { value: 0.0 } } '
        'change_threshold { direction: HIGHER_IS_BETTER absolute { value: -1.0 } } } } }\n')
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**FAST, "evaluate": {"eval_config": str(eval_config)}}))
    run = tmp_path / "run"
    assert cli.main(["run", "--config", str(config), "--out", str(run), "--runner=DirectRunner"]) == 0
    assert "served model at" in capsys.readouterr().out
    for stage in ("ingest/qc.json", "validate/stats.json", "train/model/saved_model.pb",
                  f"evaluate/{F.BLESSED}", "serving/medseq/1/saved_model.pb", "serving/models.config", "hash.key"):
        assert (run / stage).exists(), stage
    # A second run compares against the served version 1 and pushes version 2.
    assert cli.main(["run", "--config", str(config), "--out", str(run), "--runner=DirectRunner"]) == 0
    verdict = json.loads((run / "evaluate" / F.BLESSED).read_text())
    assert verdict["baseline"] and (run / "serving" / "medseq" / "2").is_dir()


@pytest.mark.slow
def test_run_stops_at_validate_on_anomalies(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**FAST, "validate": {"max_label_linf": 0.0}}))
    assert cli.main(["run", "--config", str(config), "--out", str(tmp_path / "run"), "--runner=DirectRunner"]) == 1
    err = capsys.readouterr().err
    assert "validate found 1 anomaly; the run stops here" in err and "label_skew" in err
    assert not (tmp_path / "run" / "train").exists()


def test_synthetic_input_is_written_once_and_reused_while_its_section_is_unchanged(tmp_path):
    from medseq.pipeline.config import SynthConfig
    from medseq.pipeline.runner import synthetic_input

    section = SynthConfig(task="ct_nodule", patients=2, seed=4, small=True)
    folder, reused = synthetic_input(section, tmp_path)
    assert not reused and (folder / "labels.csv").exists() and any((folder / "dicom").rglob("IM*"))
    stamp, two = (folder / "labels.csv").stat().st_mtime_ns, (folder / "labels.csv").read_text().splitlines()
    assert synthetic_input(section, tmp_path) == (folder, True)
    assert (folder / "labels.csv").stat().st_mtime_ns == stamp
    _, reused = synthetic_input(SynthConfig(task="ct_nodule", patients=3, seed=4, small=True), tmp_path)
    assert not reused and len((folder / "labels.csv").read_text().splitlines()) > len(two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no partial folder left


def test_a_config_without_input_or_synth_is_one_line(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("synth: null\ntrain: {epochs: 1}\n")  # the shipped synth section set aside, no input
    assert cli.main(["run", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "expected `input` and `labels` (your DICOM and its labels.csv) or a `synth` section" in \
        capsys.readouterr().err
