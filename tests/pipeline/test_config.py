from __future__ import annotations

from pathlib import Path

import pytest

from medseq.pipeline.config import DEFAULT_CONFIG, PipelineConfig, load_config, to_dict
from medseq.pipeline.errors import ConfigError


def test_shipped_config_loads_and_points_at_the_samples():
    config = load_config()
    assert isinstance(config, PipelineConfig)
    assert Path(config.input).is_dir() and Path(config.labels).is_file()
    assert Path(config.evaluate.eval_config).is_file()
    assert config.preprocess.channels == 1


def test_every_shipped_yaml_validates():
    for path in DEFAULT_CONFIG.parent.glob("*.yaml"):
        load_config(path)


def test_unknown_key_is_rejected_with_a_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preprocess:\n  frame: 8\n")
    with pytest.raises(ConfigError, match=r"unknown key 'frame' \(did you mean 'frames'\?\)"):
        load_config(path)


def test_bad_choice_names_expected_and_found(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  strategy: mirorred\n")
    with pytest.raises(ConfigError, match="expected one of .*found 'mirorred' \\(did you mean 'mirrored'\\?\\)"):
        load_config(path)


def test_wrong_type_and_inconsistent_windows(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match="train.epochs: expected int, found 'many'"):
        load_config(path)
    path.write_text("preprocess:\n  windows: {CT: ['40/400', '-600/1500'], default: [header]}\n")
    with pytest.raises(ConfigError, match="same, non-zero number of windows"):
        load_config(path)


def test_split_must_sum_to_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ingest:\n  split: {train: 0.5, eval: 0.1, test: 0.1}\n")
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(path)


def test_round_trip_to_dict():
    config = load_config()
    assert to_dict(config)["preprocess"]["frames"] == config.preprocess.frames
