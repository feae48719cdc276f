"""TFMA metrics of a value target that TFMA 0.52 does not ship: the coefficient of
determination R² = 1 - SSE/SST (TFMA's `SquaredPearsonCorrelation` is Pearson's r², a
different number: a model off by a constant has r² 1 and R² below it) and the root mean
squared error. Computed by TFMA's own machinery (a combiner per slice, per model), so
their thresholds, slices and change against the served model work as for TFMA's
metrics; an eval config names them by `class_name` with `module:
"medseq.components.evaluate.tfma_metrics"`.

For a frames target TFMA reads each series' event summary (evaluate/materialized.py:
its event error in source frames, in ms, and its phase score's absolute errors and
their weight, computed by model/events.py): `EventError` and `EventErrorMs` average one
over a slice's series, NaN (no timing) left out; `FrameMeanAbsoluteError` divides the
slice's summed errors by its summed weights. Both are `events.table_metrics`' numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util

from ..model.events import SUMMARY

R_SQUARED, RMSE = "r_squared", "root_mean_squared_error"
# A frames target's metrics as (numerator column, denominator column or None: a count of
# the series) of its materialized summary (events.series_summary).
SUMMARY_COLUMNS = {"event_error": (SUMMARY.index("event_error"), None),
                   "event_error_ms": (SUMMARY.index("event_error_ms"), None),
                   "frame_mae": (SUMMARY.index("frame_error_sum"), SUMMARY.index("frame_weight"))}


@dataclasses.dataclass
class _Sums:
    weight: float = 0.0
    label: float = 0.0
    label_sq: float = 0.0
    error_sq: float = 0.0

    def merge(self, other: _Sums) -> None:
        self.weight += other.weight
        self.label += other.label
        self.label_sq += other.label_sq
        self.error_sq += other.error_sq


class _Combiner(beam.CombineFn):  # type: ignore[misc]
    def __init__(self, key: metric_types.MetricKey, eval_config: Any, kind: str) -> None:
        self.key, self.eval_config, self.kind = key, eval_config, kind

    def create_accumulator(self) -> _Sums:
        return _Sums()

    def add_input(self, acc: _Sums, element: metric_types.StandardMetricInputs) -> _Sums:
        for label, prediction, weight in metric_util.to_label_prediction_example_weight(
                element, eval_config=self.eval_config, model_name=self.key.model_name,
                output_name=self.key.output_name, example_weighted=self.key.example_weighted):
            y, p, w = (metric_util.safe_to_scalar(v) for v in (label, prediction, weight))
            if np.isfinite(y) and np.isfinite(p):
                acc.weight += w
                acc.label += w * y
                acc.label_sq += w * y * y
                acc.error_sq += w * (y - p) ** 2
        return acc

    def merge_accumulators(self, accs: Iterable[_Sums]) -> _Sums:
        out = _Sums()
        for acc in accs:
            out.merge(acc)
        return out

    def extract_output(self, acc: _Sums) -> dict[metric_types.MetricKey, float]:
        if not acc.weight:
            return {self.key: float("nan")}
        if self.kind == RMSE:
            return {self.key: float(np.sqrt(acc.error_sq / acc.weight))}
        total = acc.label_sq - acc.label**2 / acc.weight
        return {self.key: float(1.0 - acc.error_sq / total) if total > 0 else float("nan")}


class _SummaryRatio(beam.CombineFn):  # type: ignore[misc]
    """Over a slice's series with a finite value in the summary's numerator column: its
    sum over the sum of the denominator column, or over their count."""

    def __init__(self, key: metric_types.MetricKey, eval_config: Any, columns: tuple[int, int | None]) -> None:
        self.key, self.eval_config, self.columns = key, eval_config, columns

    def create_accumulator(self) -> list[float]:
        return [0.0, 0.0]

    def add_input(self, acc: list[float], element: metric_types.StandardMetricInputs) -> list[float]:
        for _, prediction, _ in metric_util.to_label_prediction_example_weight(
                element, eval_config=self.eval_config, model_name=self.key.model_name,
                output_name=self.key.output_name, flatten=False, squeeze=False):
            row = np.asarray(prediction, np.float64).reshape(-1)
            numerator, denominator = self.columns
            if np.isfinite(row[numerator]):
                acc[0] += row[numerator]
                acc[1] += 1.0 if denominator is None else row[denominator]
        return acc

    def merge_accumulators(self, accs: Iterable[list[float]]) -> list[float]:
        out = [0.0, 0.0]
        for acc in accs:
            out[0] += acc[0]
            out[1] += acc[1]
        return out

    def extract_output(self, acc: list[float]) -> dict[metric_types.MetricKey, float]:
        if self.columns[1] is not None:  # a pooled ratio: as events.table_metrics, a zero weight divides by 1
            return {self.key: acc[0] / max(acc[1], 1.0)}
        return {self.key: acc[0] / acc[1] if acc[1] else float("nan")}


def _computations(kind: str) -> Any:
    def computations(name: str | None = None, eval_config: Any = None, model_name: str = "", output_name: str = "",
                     example_weighted: bool = False, **_: Any) -> metric_types.MetricComputations:
        key = metric_types.MetricKey(name=name or kind, model_name=model_name, output_name=output_name,
                                     example_weighted=example_weighted)
        combiner = _SummaryRatio(key, eval_config, SUMMARY_COLUMNS[kind]) if kind in SUMMARY_COLUMNS \
            else _Combiner(key, eval_config, kind)
        return [metric_types.MetricComputation(keys=[key], preprocessors=None, combiner=combiner)]
    return computations


class RSquared(metric_types.Metric):  # type: ignore[misc]
    """1 - SSE/SST over a slice's series (NaN when every label is the same)."""

    def __init__(self, name: str = R_SQUARED) -> None:
        super().__init__(metric_util.merge_per_key_computations(_computations(R_SQUARED)), name=name)


class RootMeanSquaredError(metric_types.Metric):  # type: ignore[misc]
    """sqrt(SSE / n) over a slice's series, in the labels' units."""

    def __init__(self, name: str = RMSE) -> None:
        super().__init__(metric_util.merge_per_key_computations(_computations(RMSE)), name=name)


class EventError(metric_types.Metric):  # type: ignore[misc]
    """A frames target: the mean over a slice's series of their event error, in source frames."""

    def __init__(self, name: str = "event_error") -> None:
        super().__init__(metric_util.merge_per_key_computations(_computations("event_error")), name=name)


class EventErrorMs(metric_types.Metric):  # type: ignore[misc]
    """A frames target: the event error in ms (series with a frame interval only)."""

    def __init__(self, name: str = "event_error_ms") -> None:
        super().__init__(metric_util.merge_per_key_computations(_computations("event_error_ms")), name=name)


class FrameMeanAbsoluteError(metric_types.Metric):  # type: ignore[misc]
    """A frames target: the phase score's MAE over a slice's labeled frames (pooled)."""

    def __init__(self, name: str = "frame_mae") -> None:
        super().__init__(metric_util.merge_per_key_computations(_computations("frame_mae")), name=name)


for _metric in (RSquared, RootMeanSquaredError, EventError, EventErrorMs, FrameMeanAbsoluteError):
    metric_types.register_metric(_metric)
