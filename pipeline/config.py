"""Typed pipeline configuration: frozen dataclasses, validated once when loaded.

The shipped default is `schemas/pipeline.yaml`. Relative paths in a config file are
resolved against the folder of that file, so the shipped config finds `data_samples/`
wherever medseq is installed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medseq.pipeline.errors import ConfigError

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
DEFAULT_CONFIG = SCHEMAS_DIR / "pipeline.yaml"
DEFAULT_SCHEMA = SCHEMAS_DIR / "record_schema.pbtxt"
DEFAULT_EVAL_CONFIG = SCHEMAS_DIR / "eval_config.pbtxt"

DTYPES = ("uint8", "float16", "float32")
TEMPORAL_MODES = ("sample", "pad")
COLOR_MODES = ("gray", "rgb")
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")
AUGMENTATIONS = ("flip", "rot90", "roll")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a decoded series becomes a T x H x W x C tensor (the one shared function)."""

    frames: int = 16
    height: int = 64
    width: int = 64
    temporal: str = "sample"
    dtype: str = "uint8"
    color: str = "gray"
    # Per modality, one entry per output channel: "C/W" (fixed window, e.g. "40/400"),
    # "header" (the series' own VOI window, percentile if absent) or "percentile".
    windows: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"CT": ("40/400",), "default": ("percentile",)}
    )
    percentiles: tuple[float, float] = (0.5, 99.5)
    min_frames: int = 1

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "min_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"preprocess.{name}: expected a positive integer, found {getattr(self, name)}")
        _check_choice("preprocess.dtype", self.dtype, DTYPES)
        _check_choice("preprocess.temporal", self.temporal, TEMPORAL_MODES)
        _check_choice("preprocess.color", self.color, COLOR_MODES)
        if "default" not in self.windows:
            raise ConfigError("preprocess.windows: expected a 'default' entry for other modalities")
        counts = {len(v) for v in self.windows.values()}
        if len(counts) != 1 or 0 in counts:
            raise ConfigError(
                "preprocess.windows: every modality needs the same, non-zero number of windows "
                f"(one per channel); found {dict((k, len(v)) for k, v in self.windows.items())}"
            )
        for modality, specs in self.windows.items():
            for spec in specs:
                parse_window(spec, f"preprocess.windows.{modality}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ConfigError(f"preprocess.percentiles: expected 0 <= low < high <= 100, found {self.percentiles}")

    @property
    def channels(self) -> int:
        per_window = next(iter(self.windows.values()))
        return len(per_window) * (3 if self.color == "rgb" else 1)

    def windows_for(self, modality: str) -> tuple[str, ...]:
        return self.windows.get(modality, self.windows["default"])


def parse_window(spec: str, where: str = "window") -> tuple[float, float] | str:
    """'40/400' -> (40.0, 400.0); 'header' and 'percentile' pass through."""
    if spec in ("header", "percentile"):
        return spec
    try:
        center, width = (float(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(
            f"{where}: expected 'center/width' (e.g. '40/400'), 'header' or 'percentile', found {spec!r}"
        ) from None
    if width <= 0:
        raise ConfigError(f"{where}: window width must be positive, found {spec!r}")
    return center, width


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.8
    eval: float = 0.1
    test: float = 0.1
    # Public salt of the patient -> split bucket hash. Independent of the secret key, so
    # rotating the key never moves a patient to another split.
    salt: str = "medseq-split-v1"

    def __post_init__(self) -> None:
        parts = (self.train, self.eval, self.test)
        if min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
            raise ConfigError(f"ingest.split: expected fractions >= 0 that sum to 1, found {parts}")


@dataclass(frozen=True)
class IngestConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    num_shards: int = 0  # 0: chosen from shard_size_mb
    shard_size_mb: float = 64.0
    hash_key_file: str | None = None
    # Class names in index order; empty: the sorted labels of labels.csv. Fix them to
    # keep class indices stable across label files; other labels are then rejected.
    classes: tuple[str, ...] = ()
    beam_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.num_shards < 0 or self.shard_size_mb <= 0:
            raise ConfigError("ingest: num_shards must be >= 0 and shard_size_mb > 0")


@dataclass(frozen=True)
class ValidateConfig:
    schema: str | None = None  # None: schemas/record_schema.pbtxt
    max_label_linf: float = 0.3
    beam_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 8
    learning_rate: float = 1e-3
    strategy: str = "default"
    conv_filters: tuple[int, ...] = (16, 32, 64)
    lstm_units: int = 32
    bidirectional: bool = False
    dropout: float = 0.2
    seed: int = 0
    tpu: str | None = None
    augment: tuple[str, ...] = ()  # flip, rot90, roll (see components/train/augment.py)

    def __post_init__(self) -> None:
        _check_choice("train.strategy", self.strategy, STRATEGIES)
        for op in self.augment:
            _check_choice("train.augment", op, AUGMENTATIONS)
        if self.epochs < 1 or self.batch_size < 1 or not self.conv_filters:
            raise ConfigError("train: epochs, batch_size and conv_filters must be positive")


@dataclass(frozen=True)
class EvaluateConfig:
    eval_config: str | None = None  # a TFMA EvalConfig text proto; None: schemas/eval_config.pbtxt
    beam_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class PushConfig:
    serving_dir: str = "serving"  # relative to the run folder
    model_name: str = "medseq"


@dataclass(frozen=True)
class PipelineConfig:
    input: str = ""
    labels: str = ""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    push: PushConfig = field(default_factory=PushConfig)


def _check_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = difflib.get_close_matches(value, choices, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}; found {value!r}{suggestion}")


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, found {type(value).__name__}")
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _convert(value, args[0], where)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        item = typing.get_args(hint)[0]
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(items))
    if origin in (Mapping, dict) or origin is typing.get_origin(Mapping[str, int]):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, found {type(value).__name__}")
        _, item = typing.get_args(hint)
        return types.MappingProxyType({str(k): _convert(v, item, f"{where}.{k}") for k, v in value.items()})
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, found {value!r}")


def from_dict(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Builds dataclass `cls` from a mapping; unknown keys are an error with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown key {key!r}{suggestion}; expected one of {', '.join(names)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Loads a YAML config (default: the shipped one) and resolves its relative paths."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    data.update(overrides or {})
    try:
        config: PipelineConfig = from_dict(PipelineConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    base = path.resolve().parent
    resolve = lambda p: str((base / p).resolve()) if p and "://" not in p else p  # noqa: E731
    return dataclasses.replace(
        config, input=resolve(config.input), labels=resolve(config.labels),
        ingest=dataclasses.replace(config.ingest, hash_key_file=resolve(config.ingest.hash_key_file)),
        validate=dataclasses.replace(config.validate, schema=resolve(config.validate.schema)),
        evaluate=dataclasses.replace(config.evaluate, eval_config=resolve(config.evaluate.eval_config)))


def to_dict(config: Any) -> Any:
    """A JSON-ready view of a config (recorded in qc.json and the run folder)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, tuple):
        return [to_dict(v) for v in config]
    return config
