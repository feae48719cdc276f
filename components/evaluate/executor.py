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

from medseq.components.evaluate.eval_config import BASELINE, CANDIDATE, has_thresholds, load_eval_config, prepare_config
from medseq.components.train.dataset import record_spec, split_files
from medseq.pipeline import features as F
from medseq.pipeline.errors import InputError


@dataclass(frozen=True)
class EvaluateOutputs:
    out: str
    blessed: bool
    reasons: tuple[str, ...]
    metrics: dict[str, float]  # overall slice, candidate


def _overall_metrics(result_path: str, multi_model: bool) -> dict[str, float]:
    result = tfma.load_eval_result(result_path, model_name=CANDIDATE if multi_model else None)
    for slice_key, metrics in result.slicing_metrics:
        if slice_key == ():
            by_sub_key = next(iter(metrics.values()))
            return {_metric_name(name, sub_key): float(v["doubleValue"])
                    for sub_key, values in by_sub_key.items() for name, v in values.items() if "doubleValue" in v}
    return {}


def _metric_name(key: str, sub_key: str = "") -> str:
    """auc, macro_auc (TFMA names it 'macro_average: true\\n_auc'), auc_class_1 (sub key 'classId:1')."""
    name = "macro_" + key.rsplit("_", 1)[-1] if key.startswith("macro_average") else key
    return f"{name}_class_{sub_key.split(':', 1)[1]}" if sub_key.startswith("classId:") else name


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
            name = ("macro_" if f.metric_key.aggregation_type.macro_average else "") + f.metric_key.name
            lines.append(f"{name} on {slice_name}: {expected}, found "
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
    base = load_eval_config(eval_config_path, len(record_spec(examples_dir).classes))
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
