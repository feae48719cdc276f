"""Metrics of per-series predictions and their seeded bootstrap confidence intervals.

The names are TFMA's (`auc`, `binary_accuracy`, `macro_auc`, `auc_class_1`, ...), so an
interval sits beside the TFMA number of the same metric. Values are exact (ranks for
AUC, step-wise average precision for AUC-PR) where TFMA interpolates over 10,000
thresholds: the two agree to about 1e-3.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .events import frame_metrics, series_table, table_metrics
from .metrics import binary_auc

Interval = tuple[float, float]


def precision_recall_steps(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, hit) after each series, taken in descending score order."""
    order = np.argsort(-scores, kind="mergesort")
    hits = positive[order].astype(np.float64)
    found = np.cumsum(hits)
    return found / np.arange(1, len(hits) + 1), found / max(hits.sum(), 1.0), hits


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve as the mean precision at each positive."""
    if not positive.any():
        return float("nan")
    precision, _, hits = precision_recall_steps(scores, positive)
    return float((precision * hits).sum() / hits.sum())


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Two classes: class 1 is the positive one, predicted when p1 >= threshold."""
    score, positive = probs[:, 1], labels == 1
    predicted = score >= threshold
    tp, fp = float(np.sum(predicted & positive)), float(np.sum(predicted & ~positive))
    fn, tn = float(np.sum(~predicted & positive)), float(np.sum(~predicted & ~positive))
    return {"auc": binary_auc(score, positive), "auc_precision_recall": average_precision(score, positive),
            "binary_accuracy": _ratio(tp + tn, len(labels)), "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "mean_label": float(positive.mean()), "mean_prediction": float(score.mean())}


def multiclass_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Three or more classes: one-vs-rest AUC per class, their macro mean, top-1 accuracy."""
    per_class = {f"auc_class_{k}": binary_auc(probs[:, k], labels == k) for k in range(probs.shape[1])}
    finite = [v for v in per_class.values() if np.isfinite(v)]
    return {**per_class, "macro_auc": float(np.mean(finite)) if finite else float("nan"),
            "sparse_categorical_accuracy": _ratio(float(np.sum(probs.argmax(-1) == labels)), len(labels))}


def percent(level: float) -> str:
    """A confidence level as people write it: 0.95 -> '95%', 0.975 -> '97.5%'."""
    return f"{level * 100:.10g}%"


def value_metrics(predicted: np.ndarray, truth: np.ndarray, cutoffs: tuple[float, ...] = ()) -> dict[str, float]:
    """A value target's metrics under TFMA's names (mean_absolute_error, mean_squared_error,
    calibration: sum of predictions over sum of labels, mean_label, mean_prediction) and
    medseq's (root_mean_squared_error; r_squared, 1 - SSE/SST; calibration_slope, the slope
    of the truth regressed on the prediction, 1 for a calibrated model; auc_below_<c>, the
    AUC of the prediction at the finding "value < c", EF < 40 for instance)."""
    p, y = np.asarray(predicted, np.float64).reshape(-1), np.asarray(truth, np.float64).reshape(-1)
    error = p - y
    sse, sst = float(np.sum(error**2)), float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    spread = float(np.sum((p - p.mean()) ** 2)) if len(p) else 0.0
    out = {"mean_absolute_error": float(np.mean(np.abs(error))) if len(y) else float("nan"),
           "mean_squared_error": sse / len(y) if len(y) else float("nan"),
           "root_mean_squared_error": float(np.sqrt(sse / len(y))) if len(y) else float("nan"),
           "r_squared": 1.0 - sse / sst if sst > 0 else float("nan"),
           "calibration": _ratio(float(p.sum()), float(y.sum())),
           "calibration_slope": float(np.sum((p - p.mean()) * (y - y.mean())) / spread) if spread > 0 else float("nan"),
           "mean_label": float(y.mean()) if len(y) else float("nan"),
           "mean_prediction": float(p.mean()) if len(p) else float("nan")}
    for cut in cutoffs:
        out[f"auc_below_{cut:g}"] = binary_auc(-p, y < cut)
    return out


# Metrics where a lower number is better (the temporal controls' drop is then a rise).
LOWER_IS_BETTER = ("event_error", "event_error_ms", "frame_mae", "mean_absolute_error", "root_mean_squared_error")


def headline_metric(probs: np.ndarray, labels: np.ndarray) -> str:
    """The one metric a target is judged by where one is needed (the temporal controls,
    the export gate): R² for values (N,), the event error for frames (labels (N, T, 6)),
    AUC for two classes, macro AUC for more."""
    if labels.ndim == 3:
        return "event_error"
    return "r_squared" if probs.ndim == 1 else "auc" if probs.shape[1] == 2 else "macro_auc"


def metrics_of(probs: np.ndarray, labels: np.ndarray, cutoffs: tuple[float, ...] = ()) -> dict[str, float]:
    """A class target's metrics from (N, K) probabilities; a value target's from (N,)
    values; a frames target's from (N, T) scores and their truth (N, T, 6)."""
    if labels.ndim == 3:
        return frame_metrics(probs, labels)
    if probs.ndim == 1:
        return value_metrics(probs, labels, cutoffs)
    return binary_metrics(probs, labels) if probs.shape[1] == 2 else multiclass_metrics(probs, labels)


def bootstrap(statistics: Callable[[np.ndarray], dict[str, float]], n: int, seed: int, samples: int = 1000,
              level: float = 0.95) -> dict[str, Interval]:
    """Percentile intervals of each of `statistics(pick)` over `samples` resamples `pick`
    of the n series, drawn with replacement from a generator seeded by `seed`. The one
    bootstrap of medseq: evaluate's metric intervals and export's paired AUC change.

    Resamples where a statistic is undefined (one class only) are left out of its interval.
    """
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(samples):
        pick = rng.integers(0, n, n)
        for name, value in statistics(pick).items():
            if np.isfinite(value):
                draws.setdefault(name, []).append(value)
    tail = (1.0 - level) / 2 * 100
    out: dict[str, Interval] = {}
    for name, values in draws.items():
        low, high = np.percentile(values, [tail, 100 - tail])
        out[name] = (float(low), float(high))
    return out


def bootstrap_intervals(probs: np.ndarray, labels: np.ndarray, seed: int, samples: int = 1000,
                        level: float = 0.95, metrics: Callable[..., dict[str, float]] = metrics_of,
                        cutoffs: tuple[float, ...] = ()) -> dict[str, Interval]:
    """Percentile intervals of every metric over series resampled with replacement."""
    if labels.ndim == 3:  # a frames target: its events are found once, its series resampled
        table = series_table(probs, labels)
        return bootstrap(lambda pick: table_metrics(table[pick]), len(table), seed, samples, level)
    if cutoffs:
        return bootstrap(lambda pick: metrics(probs[pick], labels[pick], cutoffs), len(labels), seed, samples, level)
    return bootstrap(lambda pick: metrics(probs[pick], labels[pick]), len(labels), seed, samples, level)
