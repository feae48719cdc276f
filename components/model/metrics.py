"""Training metrics: AUC (two classes: of the positive class; more: macro one-vs-rest),
accuracy, loss; and class weights.

Train AUC is streamed from per-class histograms of the predicted probabilities (the
way keras.metrics.AUC does it, 200 thresholds), summed across replicas; eval AUC is
exact, from the ranks of every eval prediction.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from ...pipeline.errors import ConfigError

BINS = 200


def histograms(probs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """(2, K, BINS) counts: [0] of examples of class k, [1] of the others, by p_k."""
    classes = tf.shape(probs)[-1]
    bins = tf.clip_by_value(tf.cast(tf.cast(probs, tf.float32) * BINS, tf.int32), 0, BINS - 1)
    counts = tf.one_hot(bins, BINS, dtype=tf.float32)  # (B, K, BINS)
    positive = tf.one_hot(labels, classes, dtype=tf.float32)[:, :, None]
    return tf.stack([tf.reduce_sum(counts * positive, 0), tf.reduce_sum(counts * (1.0 - positive), 0)])


def _binary_auc_from_histogram(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve through the thresholds of the bins (trapezoids)."""
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / pos.sum()])
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / neg.sum()])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def auc_from_histograms(hist: np.ndarray) -> float:
    """AUC of the positive class (two classes) or the macro one-vs-rest AUC."""
    classes = hist.shape[1]
    per_class = [_binary_auc_from_histogram(hist[0, k], hist[1, k]) for k in ([1] if classes == 2 else range(classes))]
    return _nanmean(per_class)


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties); nan with one class only."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # average of the 1-based ranks s+1 .. e
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """AUC of class 1 for two classes, macro one-vs-rest AUC for more."""
    classes = probs.shape[1]
    return _nanmean([binary_auc(probs[:, k], labels == k) for k in ([1] if classes == 2 else range(classes))])


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def class_weights(setting: str | Mapping[str, float], classes: tuple[str, ...],
                  counts: Mapping[str, int]) -> np.ndarray:
    """Per-class loss weights: ones, `auto` (n / (K * n_k), as scikit-learn's balanced), or given."""
    if setting == "none":
        return np.ones(len(classes), np.float32)
    if setting == "auto":
        n = np.array([counts.get(c, 0) for c in classes], np.float64)
        if np.any(n == 0):
            missing = [c for c, k in zip(classes, n, strict=True) if k == 0]
            raise ConfigError(f"train.class_weight auto: expected train records of every class, found none of "
                              f"{', '.join(missing)}")
        return (n.sum() / (len(classes) * n)).astype(np.float32)
    if not isinstance(setting, Mapping):
        raise ConfigError(f"train.class_weight: expected none, auto or a mapping, found {setting!r}")
    unknown = sorted(set(setting) - set(classes))
    if unknown:
        raise ConfigError(f"train.class_weight: unknown class(es) {', '.join(unknown)}; expected names among "
                          f"{', '.join(classes)}")
    return np.array([setting.get(c, 1.0) for c in classes], np.float32)
