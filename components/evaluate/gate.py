"""The evaluation gate: which slices are gated, every threshold with its numbers, the decision.

TFMA computes the metrics and checks the thresholds; medseq decides which slices are
large enough to gate (`min_slice_size`: smaller ones are reported, never gated, never
silently dropped), adds the confidence interval beside every gated number and, with
`on_interval`, requires the interval itself to clear a value bound (its lower end for
a lower bound). It fails closed: no thresholds, a TFMA failure or a missing metric
means no blessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from tensorflow_model_analysis.metrics import metric_specs, metric_types
from tensorflow_model_analysis.proto import config_pb2

from ..model.intervals import Interval, percent
from .inference import EvalPredictions

SliceKey = tuple[tuple[str, str], ...]  # TFMA's: () overall, (("modality", "MR"),), ...
Metrics = Mapping[SliceKey, Mapping[str, float]]


def slice_name(key: SliceKey) -> str:
    return ", ".join(f"{k}={v}" for k, v in key) or "overall"


def slice_mask(preds: EvalPredictions, key: SliceKey) -> np.ndarray:
    mask = np.ones(len(preds), bool)
    for feature, value in key:
        mask &= preds.select(feature, value)
    return mask


def concrete_slices(spec: config_pb2.SlicingSpec, preds: EvalPredictions) -> dict[SliceKey, int]:
    """The slices a SlicingSpec stands for on these series, with their series counts."""
    fixed = dict(spec.feature_values)
    mask = slice_mask(preds, tuple(fixed.items()))
    keys = list(spec.feature_keys)
    if not keys:
        return {tuple(sorted(fixed.items())): int(mask.sum())}
    found: dict[SliceKey, int] = {}
    for i in np.flatnonzero(mask):
        key = tuple(sorted({**fixed, **{k: str(preds.slices[k][i]) for k in keys}}.items()))
        found[key] = found.get(key, 0) + 1
    return found


def _spec_of(key: SliceKey) -> config_pb2.SlicingSpec:
    return config_pb2.SlicingSpec(feature_values=dict(key))


def gated_config(config: config_pb2.EvalConfig, preds: EvalPredictions,
                 min_slice_size: int) -> tuple[config_pb2.EvalConfig, list[str]]:
    """`config` with every threshold bound to the concrete slices it will gate: the
    overall slice always, another slice only with at least `min_slice_size` series.
    Returns the config and one line per slice left ungated."""
    out = config_pb2.EvalConfig()
    out.CopyFrom(config)
    small: dict[SliceKey, int] = {}

    def keep(specs: list[config_pb2.SlicingSpec]) -> list[config_pb2.SlicingSpec]:
        kept = []
        for spec in specs:
            for key, n in concrete_slices(spec, preds).items():
                if key == () or n >= min_slice_size:
                    kept.append(_spec_of(key))
                else:
                    small[key] = n
        return kept

    for metrics_spec in out.metrics_specs:
        for metric in metrics_spec.metrics:
            if metric.HasField("threshold"):
                per_slice = metric.per_slice_thresholds.add()
                per_slice.threshold.CopyFrom(metric.threshold)
                per_slice.slicing_specs.extend(list(out.slicing_specs) or [config_pb2.SlicingSpec()])
                metric.ClearField("threshold")
            for per_slice in list(metric.per_slice_thresholds):
                specs = keep(list(per_slice.slicing_specs))
                del per_slice.slicing_specs[:]
                per_slice.slicing_specs.extend(specs)
                if not specs:
                    metric.per_slice_thresholds.remove(per_slice)
    lines = [f"{slice_name(k)}: {n} series < min_slice_size {min_slice_size}, reported, not gated"
             for k, n in sorted(small.items())]
    return out, lines


def metric_name(key: metric_types.MetricKey) -> str:
    """auc, auc_diff, macro_auc, auc_class_1: the names medseq shows for TFMA's keys."""
    name = key.name + ("_diff" if key.is_diff else "")
    if key.aggregation_type and key.aggregation_type.macro_average:
        name = "macro_" + name
    if key.sub_key and key.sub_key.class_id is not None:
        name += f"_class_{key.sub_key.class_id}"
    return name


@dataclass(frozen=True)
class Check:
    """One threshold on one slice, with what was expected and what was found."""

    metric: str
    slice: str
    expected: str
    found: float | None
    interval: Interval | None
    passed: bool
    level: float = 0.95  # the interval's confidence level (evaluate.confidence_level)

    def line(self) -> str:
        found = "not computed" if self.found is None else f"{self.found:.4f}"
        ci = f" [{percent(self.level)} CI {self.interval[0]:.4f}, {self.interval[1]:.4f}]" if self.interval else ""
        return f"{self.metric} on {self.slice}: expected {self.expected}, found {found}{ci}: " \
               f"{'pass' if self.passed else 'FAIL'}"

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "line": self.line()}


def _value_check(name: str, where: str, bound: config_pb2.GenericValueThreshold, found: float | None,
                 interval: Interval | None, on_interval: bool, level: float) -> Check:
    low = bound.lower_bound.value if bound.HasField("lower_bound") else -np.inf
    high = bound.upper_bound.value if bound.HasField("upper_bound") else np.inf
    parts = ([f">= {low:g}"] if np.isfinite(low) else []) + ([f"<= {high:g}"] if np.isfinite(high) else [])
    expected = " and ".join(parts)
    passed = found is not None and low <= found <= high
    if on_interval and interval is not None:
        expected += f" (the whole {percent(level)} interval)"
        passed = passed and interval[0] >= low and interval[1] <= high
    return Check(name, where, expected, found, interval, bool(passed), level)


def _change_check(name: str, where: str, change: config_pb2.GenericChangeThreshold, diff: float | None,
                  value: float | None) -> Check:
    higher = change.direction == config_pb2.MetricDirection.HIGHER_IS_BETTER
    sign = ">=" if higher else "<="
    ok, parts = diff is not None, []
    if change.HasField("absolute"):
        parts.append(f"change {sign} {change.absolute.value:+g} against the served model")
        ok = ok and (diff >= change.absolute.value if higher else diff <= change.absolute.value)  # type: ignore
    if change.HasField("relative"):
        parts.append(f"relative change {sign} {change.relative.value:+g}")
        base = None if diff is None or value is None else value - diff
        ratio = diff / base if base else float("nan")  # type: ignore[operator]
        ok = ok and (ratio >= change.relative.value if higher else ratio <= change.relative.value)
    return Check(name, where, " and ".join(parts), diff, None, bool(ok))


def threshold_checks(config: config_pb2.EvalConfig, candidate: Metrics, intervals: Mapping[SliceKey, Mapping[
        str, Interval]], on_interval: bool, model_name: str, level: float = 0.95) -> list[Check]:
    """Every threshold of a `gated_config` on every slice it names, for the candidate."""
    checks = []
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(config.metrics_specs, eval_config=config)
    for key, sliced in thresholds.items():
        if key.model_name not in ("", model_name):
            continue  # a threshold of the baseline: TFMA never gates it
        name = metric_name(key)
        for spec, threshold in sliced:
            if isinstance(spec, config_pb2.CrossSlicingSpec):
                continue  # TFMA gates cross-slice thresholds; its failures reach the reasons
            slice_key: SliceKey = tuple(sorted(dict(spec.feature_values).items())) if spec else ()
            values = candidate.get(slice_key, {})
            where = slice_name(slice_key)
            if isinstance(threshold, config_pb2.GenericValueThreshold):
                checks.append(_value_check(name, where, threshold, values.get(name),
                                           intervals.get(slice_key, {}).get(name), on_interval, level))
            else:
                checks.append(_change_check(name, where, threshold, values.get(name),
                                            values.get(name.replace("_diff", "", 1))))
    return sorted(checks, key=lambda c: (c.slice != "overall", c.slice, c.metric))
