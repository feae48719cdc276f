"""TFMA evaluation of the candidate on held-out patients, against the served model.

Writes TFMA's own output (`tfma.load_eval_result(OUT/metrics, model_name='candidate')`),
`report.html`, and exactly one of BLESSED / NOT_BLESSED: a JSON verdict with every
threshold and its numbers. The gate fails closed: no thresholds, no blessing; an
error in TFMA, no blessing.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from google.protobuf import text_format

from ...pipeline import features as F
from ...pipeline.config import EvaluateConfig
from ...pipeline.errors import EvaluationFailed
from ...pipeline.fingerprints import tree_fingerprint
from ..io import storage
from ..io.beam import options as beam_options
from ..io.beam import pipeline as beam_pipeline
from ..io.examples import load_spec_json, record_spec, split_files
from ..io.remote_errors import describe_runner
from ..model.domain import domain_threshold, shift_separation
from ..model.events import series_summary
from ..model.intervals import LOWER_IS_BETTER, Interval, bootstrap_intervals, headline_metric, metrics_of
from . import gate, report
from .eval_config import BASELINE, CANDIDATE, has_thresholds, load_eval_config, prepare_config
from .inference import PREDICTIONS_FILE, VARIANTS, EvalPredictions, predict_split
from .materialized import EVENT_SUMMARY, materialized_config, with_predictions

VERDICT_VERSION = 1


@dataclass(frozen=True)
class EvaluateOutputs:
    out: str
    blessed: bool
    reasons: tuple[str, ...]
    metrics: dict[str, float]  # overall slice, candidate
    intervals: dict[str, Interval] = field(default_factory=dict)
    checks: tuple[gate.Check, ...] = ()
    temporal: dict[str, float] = field(default_factory=dict)  # variant -> AUC (macro for 3+ classes)


def _metric_name(key: str, sub_key: str = "") -> str:
    """auc, macro_auc (TFMA names it 'macro_average: true\\n_auc'), auc_class_1 (sub key 'classId:1')."""
    name = "macro_" + key.split("\n_", 1)[-1] if key.startswith("macro_average") else key
    return f"{name}_class_{sub_key.split(':', 1)[1]}" if sub_key.startswith("classId:") else name


def sliced_metrics(result_path: str, model_name: str | None) -> dict[gate.SliceKey, dict[str, float]]:
    """{slice key: {metric: value}} of one model in a TFMA result."""
    result = tfma.load_eval_result(result_path, model_name=model_name)
    out: dict[gate.SliceKey, dict[str, float]] = {}
    for slice_key, metrics in result.slicing_metrics:
        by_sub_key = next(iter(metrics.values()))
        key = tuple((str(k), v.decode() if isinstance(v, bytes) else str(v)) for k, v in slice_key)
        out[key] = {_metric_name(name, sub_key): float(v["doubleValue"])
                    for sub_key, values in by_sub_key.items() for name, v in values.items() if "doubleValue" in v}
    return out


def tfma_failures(validation: Any) -> list[str]:
    """TFMA's own failure lines (cross-slice thresholds, metrics it could not find)."""
    lines = []
    for failure in getattr(validation, "metric_validations_per_slice", []):
        where = ", ".join(f"{k.column}={k.bytes_value.decode() or k.int64_value or k.float_value}"
                          for k in failure.slice_key.single_slice_keys) or "overall"
        for f in failure.failures:
            lines.append(f"TFMA: {f.metric_key.name} on {where}: {f.message.strip() or 'threshold not met'} "
                         f"(found {f.metric_value.double_value.value:.4f})")
    return lines


def _intervals(preds: EvalPredictions, keys: list[gate.SliceKey], settings: EvaluateConfig,
               cutoffs: tuple[float, ...] = ()) -> dict[gate.SliceKey, dict[str, Interval]]:
    out = {}
    for key in keys:
        mask = gate.slice_mask(preds, key)
        out[key] = bootstrap_intervals(preds.probs["frames"][mask], preds.labels[mask], settings.seed,
                                       settings.bootstrap_samples, settings.confidence_level, cutoffs=cutoffs)
    return out


def temporal_reliance(preds: EvalPredictions, settings: EvaluateConfig) -> tuple[dict[str, Any], gate.Check | None]:
    """The target's metric on the real frames, shuffled frames and one repeated frame;
    the optional gate."""
    name = headline_metric(preds.probs["frames"], preds.labels)
    rows: dict[str, Any] = {"metric": name, "min_drop": settings.temporal_min_drop}
    for variant in VARIANTS:
        ci = bootstrap_intervals(preds.probs[variant], preds.labels, settings.seed, settings.bootstrap_samples,
                                 settings.confidence_level).get(name)
        rows[variant] = {"value": metrics_of(preds.probs[variant], preds.labels)[name], "interval": ci}
    if settings.temporal_min_drop is None:
        return rows, None
    drop = rows["frames"]["value"] - rows["one_frame"]["value"]
    if name in LOWER_IS_BETTER:  # an error: what the sequence is worth is how much it rises
        drop = -drop
    what = "rise" if name in LOWER_IS_BETTER else "drop"
    check = gate.Check(f"{name} {what} with one frame repeated", "overall", f">= {settings.temporal_min_drop:g}",
                       float(drop), None, bool(drop >= settings.temporal_min_drop))
    return rows, check


def _materialized_models(config: Any) -> list[Any]:
    """One model per spec, of TFMA's materialized-prediction type: nothing to load, and
    TFMA knows which one is the baseline (for its change thresholds)."""
    return [tfma.types.EvalSharedModel(model_name=spec.name, model_type=tfma.constants.MATERIALIZED_PREDICTION,
                                       is_baseline=spec.is_baseline) for spec in config.model_specs]


def _in_order(result_path: str) -> None:
    """TFMA's record files rewritten with their records sorted: it writes slices in the
    order its workers finish them, and the same evaluation should be the same bytes."""
    for path in sorted(Path(result_path).glob("*.tfrecord*")):
        records = sorted(bytes(r) for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
        partial = path.with_name(path.name + ".partial")
        with tf.io.TFRecordWriter(str(partial)) as writer:
            for record in records:
                writer.write(record)
        partial.replace(path)


def temp_location(beam_args: list[str]) -> str | None:
    """Beam's --temp_location, read as Beam reads it."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    location: str | None = beam_options(beam_args).view_as(GoogleCloudOptions).temp_location
    return location


def _run_tfma(config: Any, examples: list[bytes], result_path: str, beam_args: list[str]) -> Any:
    """TFMA's model-agnostic evaluation of `examples` (records that carry each model's
    predictions) into `result_path`; its validation result. With Beam's --temp_location
    TFMA's workers write under it (workers that share no disk with this process write to
    an object store) and the result is copied back."""
    import apache_beam as beam
    from tfx_bsl.public import tfxio

    temp = temp_location(beam_args)
    written = storage.join(temp, f"medseq-evaluate-{uuid.uuid4().hex[:8]}") if temp else result_path
    source = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["medseq"],
                                       raw_record_column_name=tfma.ARROW_INPUT_COLUMN)
    try:
        with beam_pipeline(beam_args, small_input=True) as pipeline:  # the records are in this process
            _ = (pipeline | "EvalRecords" >> beam.Create(examples, reshuffle=False)
                 | "ToArrow" >> source.BeamSource()
                 | "TFMA" >> tfma.ExtractEvaluateAndWriteResults(
                     eval_config=config, eval_shared_model=_materialized_models(config), output_path=written))
        if written != result_path:
            shutil.rmtree(result_path, ignore_errors=True)
            storage.local_copy(written, result_path)
        _in_order(result_path)
    finally:
        if written != result_path and storage.exists(written):
            storage.delete([written])
    return tfma.load_validation_result(result_path)


def evaluate(examples_dir: str, model_dir: str, out: str | Path, eval_config_path: str | None = None,
             baseline_dir: str | None = None, beam_args: list[str] | None = None,
             settings: EvaluateConfig | None = None) -> EvaluateOutputs:
    """Evaluates `model_dir` on the eval split of `examples_dir` into `out`."""
    settings = settings or EvaluateConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (F.BLESSED, F.NOT_BLESSED):
        (out / name).unlink(missing_ok=True)
    spec = record_spec(examples_dir)
    classes = spec.classes
    cutoffs = tuple(settings.value_cutoffs) if spec.is_value else ()
    preds = predict_split(examples_dir, model_dir, settings.seed)
    served_probs = _baseline_probs(baseline_dir, examples_dir, settings)
    config, small = gate.gated_config(prepare_config(load_eval_config(eval_config_path, len(classes), spec.target),
                                                     baseline=baseline_dir is not None),
                                      preds, settings.min_slice_size)
    config = materialized_config(config)
    (out / "eval_config.pbtxt").write_text(text_format.MessageToString(config))
    notes = [] if baseline_dir else ["no baseline (no served model): change thresholds skipped"]
    result_path = str(out / "metrics")
    probs = {CANDIDATE: preds.probs["frames"], **({BASELINE: served_probs} if served_probs is not None else {})}
    made: dict[str, Any] = probs
    if preds.is_frames:  # TFMA averages each series' event summary (model/events.py)
        made = {name: {EVENT_SUMMARY: series_summary(p, preds.labels)} for name, p in probs.items()}
    examples = with_predictions(split_files(examples_dir, "eval"), made)
    reasons: list[str] = []
    try:
        validation = _run_tfma(config, examples, result_path, list(beam_args or []))
        candidate = sliced_metrics(result_path, CANDIDATE if baseline_dir else None)
        served = sliced_metrics(result_path, BASELINE) if baseline_dir else {}
    except Exception as exc:  # noqa: BLE001 - no evaluation is no verdict: neither BLESSED nor NOT_BLESSED
        shutil.rmtree(result_path, ignore_errors=True)
        runner = describe_runner(exc)
        if runner:  # exit 2 as any evaluation that did not happen: 1 is NOT_BLESSED, a verdict
            raise EvaluationFailed(f"TFMA could not evaluate the candidate, so no verdict was written: {runner}") \
                from None
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise EvaluationFailed(f"TFMA could not evaluate the candidate ({type(exc).__name__}: {first}); no verdict "
                               "was written, so nothing can be pushed: fix the eval config or the runner and run "
                               "again") from None
    intervals = _intervals(preds, sorted(candidate) or [()], settings, cutoffs)
    if preds.is_value or preds.is_frames:  # what TFMA does not compute (AUC at each cut-off, calibration
        # slope; events missed, the error per event kind): medseq's exact numbers
        for key, values in candidate.items():
            mask = gate.slice_mask(preds, key)
            exact = metrics_of(preds.probs["frames"][mask], preds.labels[mask], cutoffs)
            values.update({k: v for k, v in exact.items() if k not in values})
    checks = gate.threshold_checks(config, candidate, intervals, settings.gate_on_interval, CANDIDATE,
                                   settings.confidence_level)
    temporal, temporal_check = temporal_reliance(preds, settings)
    checks += [temporal_check] if temporal_check else []
    reasons += [c.line() for c in checks if not c.passed]
    if not validation.validation_ok and not reasons:
        reasons += tfma_failures(validation) or ["TFMA's validation failed"]
    if not has_thresholds(config):
        reasons.insert(0, "no thresholds are configured: the gate fails closed")
    blessed = not reasons and bool(validation.validation_ok)
    verdict = {
        "version": VERDICT_VERSION, "blessed": blessed, "decision": F.BLESSED if blessed else F.NOT_BLESSED,
        "model": str(model_dir), "model_fingerprint": tree_fingerprint(model_dir), "baseline": baseline_dir,
        "classes": list(classes), "eval_series": len(preds),
        **({"target": "value", "value": {k: spec.value.get(k) for k in ("column", "units")}} if spec.is_value else {}),
        **({"target": "frames", "events": list(classes)} if spec.is_frames else {}),
        **({"target": "anomaly", "anomaly": anomaly} if (anomaly := _anomaly(model_dir)) else {}),
        "confidence_level": settings.confidence_level, "gate_on_interval": settings.gate_on_interval,
        "min_slice_size": settings.min_slice_size,
        "checks": [c.to_json() for c in checks], "not_gated": small, "notes": notes, "reasons": reasons,
        "metrics": candidate.get((), {}), "intervals": intervals.get((), {}), "baseline_metrics": served.get((), {}),
        "temporal": temporal,
        # Not gated: how the domain score parts the eval series from shifted copies of them.
        **({"domain": shift_separation(preds.domain["frames"], {k: v for k, v in preds.domain.items()
                                                                if k != "frames"}, domain_threshold(model_dir))}
           if preds.domain else {}),
        "slices": [{"slice": gate.slice_name(k), "series": int(gate.slice_mask(preds, k).sum()),
                    "metrics": v, "intervals": intervals.get(k, {})} for k, v in sorted(candidate.items())],
    }
    (out / (F.BLESSED if blessed else F.NOT_BLESSED)).write_text(json.dumps(verdict, indent=2) + "\n")
    (out / PREDICTIONS_FILE).write_text(json.dumps(preds.to_json()) + "\n")
    (out / "report.html").write_text(report.render(verdict, preds, classes, served_probs))
    return EvaluateOutputs(str(out), blessed, tuple(reasons), dict(candidate.get((), {})),
                           dict(intervals.get((), {})), tuple(checks),
                           {k: temporal[k]["value"] for k in VARIANTS})


def _anomaly(model_dir: str) -> dict[str, Any] | None:
    """An anomaly model's normal class and threshold (train.target: anomaly), else None."""
    found: dict[str, Any] | None = load_spec_json(model_dir).get("training", {}).get("anomaly")
    return found


def _baseline_probs(baseline_dir: str | None, examples_dir: str, settings: EvaluateConfig) -> np.ndarray | None:
    """The served model's probabilities on the eval split (what its change thresholds compare)."""
    if not baseline_dir:
        return None
    try:
        return predict_split(examples_dir, baseline_dir, settings.seed, controls=False).probs["frames"]
    except Exception as exc:  # noqa: BLE001 - a served model that cannot read these records: no comparison, no verdict
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise EvaluationFailed(f"the served model {baseline_dir} could not predict on these records "
                               f"({type(exc).__name__}: {first}); no verdict was written") from None
