from __future__ import annotations

from pathlib import Path

import pytest

from medseq.pipeline.config import DEFAULT_CONFIG, PipelineConfig, load_config, to_dict
from medseq.pipeline.errors import ConfigError


def test_shipped_config_loads_and_runs_on_synthetic_data():
    config = load_config()
    assert isinstance(config, PipelineConfig)
    assert config.synth is not None and not config.input and not config.labels
    assert config.synth.task == "cine_ef" and config.synth.patients >= 200  # >= 40 eval series at 60/20/20
    assert config.evaluate.eval_config is None  # chosen by the class count
    assert config.preprocess.channels == 1


def rejects(tmp_path: Path, text: str, message: str) -> None:
    """A config file holding `text` fails to load with an error matching `message`."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_synth_and_input_exclude_each_other(tmp_path):
    rejects(tmp_path, "input: dicom\nlabels: labels.csv\nsynth: {task: ct_nodule}\n",
            "expected either `synth` .* or `input` and `labels` .*, found both")
    rejects(tmp_path, "synth: {task: ct_nodules}\n",
            "synth.task: .*found 'ct_nodules' \\(did you mean 'ct_nodule'\\?\\)")
    on_samples = load_config().on_input("dicom", "labels.csv")
    assert on_samples.synth is None and on_samples.input == "dicom"


def test_every_shipped_yaml_validates():
    for path in DEFAULT_CONFIG.parent.glob("*.yaml"):
        load_config(path)


def test_unknown_key_is_rejected_with_a_suggestion(tmp_path):
    rejects(tmp_path, "preprocess:\n  frame: 8\n", r"unknown key 'frame' \(did you mean 'frames'\?\)")


def test_bad_choice_names_expected_and_found(tmp_path):
    rejects(tmp_path, "train:\n  strategy: mirorred\n",
            "expected one of .*found 'mirorred' \\(did you mean 'mirrored'\\?\\)")


def test_wrong_type_and_inconsistent_windows(tmp_path):
    rejects(tmp_path, "train:\n  epochs: many\n", "train.epochs: expected int, found 'many'")
    rejects(tmp_path, "preprocess:\n  windows: {CT: ['40/400', '-600/1500'], default: [header]}\n",
            "same, non-zero number of windows")


def test_model_options_are_checked_at_load(tmp_path):
    rejects(tmp_path, "train: {encoder: mobilenet_v3}\n", "did you mean 'mobilenet_v3_small'")
    rejects(tmp_path, "train: {class_weight: balanced}\n", "train.class_weight: expected one of none, auto")
    rejects(tmp_path, "train: {class_weight: {normal: -1}}\n", "expected weights >= 0")
    rejects(tmp_path, "train: {jit_compile: true}\n", "expected deterministic: false beside jit_compile: true")
    rejects(tmp_path, "train: {tta: true, augment: [roll]}\n", "train.tta: .* found augment \\['roll'\\]")
    rejects(tmp_path, "train: {tta: true, target: frames, causal: true}\n", "causal true")
    rejects(tmp_path, "train: {ema: 1.0}\n", "train.ema: expected a momentum in \\[0, 1\\)")
    path = tmp_path / "ok.yaml"
    path.write_text("train: {class_weight: {normal: 2, reduced_ef: 0.5}}\n")
    assert dict(load_config(path).train.class_weight) == {"normal": 2.0, "reduced_ef": 0.5}


def test_split_must_sum_to_one(tmp_path):
    rejects(tmp_path, "ingest:\n  split: {train: 0.5, eval: 0.1, test: 0.1}\n", "sum to 1")


def test_round_trip_to_dict():
    config = load_config()
    assert to_dict(config)["preprocess"]["frames"] == config.preprocess.frames


def test_a_partial_config_changes_only_the_keys_it_names(tmp_path):
    shipped = load_config()
    path = tmp_path / "c.yaml"
    path.write_text("preprocess: {frames: 1}\ntrain: {epochs: 2}\n")
    partial = load_config(path)
    assert partial.preprocess.frames == 1 and partial.train.epochs == 2
    assert partial.train.augment == shipped.train.augment and partial.train.batch_size == shipped.train.batch_size
    assert partial.ingest.split == shipped.ingest.split and partial.preprocess.windows == shipped.preprocess.windows
    assert partial.synth == shipped.synth
    path.write_text("input: dicom\nlabels: labels.csv\npreprocess: {windows: {default: [percentile]}}\n")
    real = load_config(path)
    assert real.synth is None and real.input == str(tmp_path / "dicom")
    assert dict(real.preprocess.windows) == {"default": ("percentile",)}  # a mapping is replaced whole
