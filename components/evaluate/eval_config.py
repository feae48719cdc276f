"""The TFMA EvalConfig of an evaluation: the shipped default for the class count, the
class-dependent fields filled in, the candidate and baseline model specs named."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tensorflow_model_analysis.proto import config_pb2

from ...pipeline import features as F
from ...pipeline.config import (
    DEFAULT_EVAL_CONFIG,
    DEFAULT_EVAL_CONFIG_FRAMES,
    DEFAULT_EVAL_CONFIG_MULTICLASS,
    DEFAULT_EVAL_CONFIG_VALUE,
)
from ...pipeline.errors import ConfigError

CANDIDATE, BASELINE = "candidate", "baseline"


def load_eval_config(path: str | None, classes: int, target: str = "class") -> config_pb2.EvalConfig:
    """The config at `path`, or the shipped one for `classes` classes (0: a value target)
    or a frames target; completed for them."""
    shipped = DEFAULT_EVAL_CONFIG_FRAMES if target == "frames" else DEFAULT_EVAL_CONFIG_VALUE if classes == 0 else \
        DEFAULT_EVAL_CONFIG if classes <= 2 else DEFAULT_EVAL_CONFIG_MULTICLASS
    path = path or str(shipped)
    try:
        config = text_format.Parse(Path(path).read_text(), config_pb2.EvalConfig())
    except FileNotFoundError:
        raise ConfigError(f"eval config not found: {path}") from None
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: not a valid TFMA EvalConfig text proto ({exc})") from None
    return complete_for_classes(config, classes)


def complete_for_classes(config: config_pb2.EvalConfig, classes: int) -> config_pb2.EvalConfig:
    """Fills what a shipped config cannot know: one-vs-rest over every class where
    `binarize` names none, and equal weights where a macro average names none."""
    for spec in config.metrics_specs:
        if spec.HasField("binarize") and not (spec.binarize.class_ids.values or spec.binarize.top_k_list.values):
            spec.binarize.class_ids.values.extend(range(classes))
        if spec.aggregate.macro_average and not spec.aggregate.class_weights:
            for k in range(classes):
                spec.aggregate.class_weights[k] = 1.0
    return config


def has_thresholds(config: config_pb2.EvalConfig) -> bool:
    return any(m.HasField("threshold") or m.per_slice_thresholds or m.cross_slice_thresholds
               for spec in config.metrics_specs for m in spec.metrics)


def prepare_config(base: config_pb2.EvalConfig, baseline: bool) -> config_pb2.EvalConfig:
    """Names the candidate (and baseline) model specs; without a baseline, drops change thresholds."""
    config = config_pb2.EvalConfig()
    config.CopyFrom(base)
    template = base.model_specs[0] if base.model_specs else config_pb2.ModelSpec(signature_name=F.SERVING_SIGNATURE)
    del config.model_specs[:]
    candidate = config.model_specs.add()
    candidate.CopyFrom(template)
    candidate.name = CANDIDATE
    if baseline:
        spec = config.model_specs.add()
        spec.CopyFrom(template)
        spec.name, spec.is_baseline = BASELINE, True
    else:
        for metrics_spec in config.metrics_specs:
            for metric in metrics_spec.metrics:
                _drop_change_thresholds(metric)
    return config


def _drop_change_thresholds(metric: config_pb2.MetricConfig) -> None:
    metric.threshold.ClearField("change_threshold")
    if not metric.threshold.HasField("value_threshold"):
        metric.ClearField("threshold")
    for per_slice in list(metric.per_slice_thresholds):
        per_slice.threshold.ClearField("change_threshold")
        if not per_slice.threshold.HasField("value_threshold"):
            metric.per_slice_thresholds.remove(per_slice)
