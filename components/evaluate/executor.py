"""TFMA evaluation of the candidate on held-out patients, against the served model.

Writes TFMA's own output (loadable with `tfma.load_eval_result`), a small report, and
exactly one of BLESSED / NOT_BLESSED. The gate fails closed: no thresholds, no blessing.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import tensorflow_model_analysis as tfma
from google.protobuf import text_format
from tensorflow_model_analysis.proto import config_pb2

from medseq.components.train.dataset import split_files
from medseq.pipeline import features as F
from medseq.pipeline.config import DEFAULT_EVAL_CONFIG
from medseq.pipeline.errors import ConfigError, InputError

CANDIDATE, BASELINE = "candidate", "baseline"


@dataclass(frozen=True)
class EvaluateOutputs:
    out: str
    blessed: bool
    reasons: tuple[str, ...]
    metrics: dict[str, float]  # overall slice, candidate


def load_eval_config(path: str | None) -> config_pb2.EvalConfig:
    path = path or str(DEFAULT_EVAL_CONFIG)
    try:
        return text_format.Parse(Path(path).read_text(), config_pb2.EvalConfig())
    except FileNotFoundError:
        raise ConfigError(f"eval config not found: {path}") from None
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: not a valid TFMA EvalConfig text proto ({exc})") from None


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


def _overall_metrics(result_path: str, multi_model: bool) -> dict[str, float]:
    result = tfma.load_eval_result(result_path, model_name=CANDIDATE if multi_model else None)
    for slice_key, metrics in result.slicing_metrics:
        if slice_key == ():
            values = next(iter(metrics.values())).get("", {})
            return {name: float(v.get("doubleValue", 0.0)) for name, v in values.items() if "doubleValue" in v}
    return {}


def _failures(validation: object) -> tuple[str, ...]:
    lines = []
    for failure in getattr(validation, "metric_validations_per_slice", []):
        slice_name = ", ".join(f"{k.column}={k.bytes_value.decode() or k.int64_value or k.float_value}"
                               for k in failure.slice_key.single_slice_keys) or "overall"
        for f in failure.failures:
            bound = f.metric_threshold.value_threshold
            expected = (f"expected >= {bound.lower_bound.value:g}" if bound.HasField("lower_bound")
                        else f"expected <= {bound.upper_bound.value:g}" if bound.HasField("upper_bound")
                        else "expected no regression against the served model")
            lines.append(f"{f.metric_key.name} on {slice_name}: {expected}, found "
                         f"{f.metric_value.double_value.value:.4f} {f.message.strip()}".strip())
    return tuple(lines)


def _report(out: Path, blessed: bool, reasons: tuple[str, ...], metrics: dict[str, float]) -> None:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in sorted(metrics.items()))
    items = "".join(f"<li>{html.escape(r)}</li>" for r in reasons) or "<li>all thresholds met</li>"
    (out / "report.html").write_text(
        f"<!doctype html><title>medseq evaluation</title><h1>{'BLESSED' if blessed else 'NOT BLESSED'}</h1>"
        f"<h2>Overall metrics (candidate)</h2><table>{rows}</table><h2>Gate</h2><ul>{items}</ul>"
        "<p>Per-slice metrics and plots: <code>tfma.load_eval_result('metrics', model_name='candidate')</code></p>")


def evaluate(examples_dir: str, model_dir: str, out: str | Path, eval_config_path: str | None = None,
             baseline_dir: str | None = None, beam_args: list[str] | None = None) -> EvaluateOutputs:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (F.BLESSED, F.NOT_BLESSED):
        (out / name).unlink(missing_ok=True)
    files = split_files(examples_dir, "eval")
    if not files:
        raise InputError(f"{examples_dir}/eval: no records to evaluate on")
    base = load_eval_config(eval_config_path)
    config = prepare_config(base, baseline=baseline_dir is not None)
    models = [tfma.default_eval_shared_model(model_dir, eval_config=config, model_name=CANDIDATE)]
    if baseline_dir:
        models.append(tfma.default_eval_shared_model(baseline_dir, eval_config=config, model_name=BASELINE))
    (out / "eval_config.pbtxt").write_text(text_format.MessageToString(config))
    result_path = str(out / "metrics")
    from apache_beam.options.pipeline_options import PipelineOptions

    tfma.run_model_analysis(
        eval_shared_model=models if baseline_dir else models[0], eval_config=config,
        data_location=os.path.join(examples_dir, "eval", "*.tfrecord.gz"), output_path=result_path,
        pipeline_options=PipelineOptions(beam_args or []))
    validation = tfma.load_validation_result(result_path)
    reasons = _failures(validation)
    if not has_thresholds(config):
        reasons = ("no thresholds are configured: the gate fails closed",)
    blessed = bool(validation.validation_ok) and not reasons
    metrics = _overall_metrics(result_path, multi_model=baseline_dir is not None)
    (out / (F.BLESSED if blessed else F.NOT_BLESSED)).write_text(json.dumps(
        {"blessed": blessed, "reasons": list(reasons), "metrics": metrics,
         "baseline": bool(baseline_dir)}, indent=2) + "\n")
    _report(out, blessed, reasons, metrics)
    return EvaluateOutputs(str(out), blessed, reasons, metrics)
