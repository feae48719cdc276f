"""Evaluation plots as inline PNG (matplotlib's object API, no pyplot: no backend is
chosen for the process): ROC, precision-recall, calibration and the confusion matrix,
from the per-series predictions."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .intervals import precision_recall_steps


def _subplots(*grid: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode()


def roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="mergesort")
    s, pos = scores[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tp, fp = np.cumsum(pos)[last], np.cumsum(1.0 - pos)[last]
    return np.r_[0.0, fp / max(fp[-1], 1.0)], np.r_[0.0, tp / max(tp[-1], 1.0)]


def _curves(probs: Mapping[str, np.ndarray], labels: np.ndarray, classes: tuple[str, ...]
            ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(legend, scores, positive) for each curve: the positive class of two, else each class."""
    out = []
    for model, p in probs.items():
        for k in ([1] if len(classes) == 2 else range(len(classes))):
            legend = model if len(classes) == 2 else f"{model}: {classes[k]} vs rest"
            out.append((legend, p[:, k], labels == k))
    return out


def roc_plot(probs: Mapping[str, np.ndarray], labels: np.ndarray, classes: tuple[str, ...]) -> str:
    fig, ax = _subplots(figsize=(4.2, 4.2))
    for legend, scores, positive in _curves(probs, labels, classes):
        fpr, tpr = roc_points(scores, positive)
        ax.step(fpr, tpr, where="post", label=legend)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
           title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def pr_plot(probs: Mapping[str, np.ndarray], labels: np.ndarray, classes: tuple[str, ...]) -> str:
    fig, ax = _subplots(figsize=(4.2, 4.2))
    for legend, scores, positive in _curves(probs, labels, classes):
        precision, recall, _ = precision_recall_steps(scores, positive)
        ax.step(np.r_[0.0, recall], np.r_[1.0, precision], where="post", label=legend)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=7)
    return _png(fig)


def calibration_plot(probs: Mapping[str, np.ndarray], labels: np.ndarray, classes: tuple[str, ...],
                     bins: int = 10) -> str:
    """Mean predicted probability against the observed rate, in equal-width bins."""
    fig, ax = _subplots(figsize=(4.2, 4.2))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for legend, scores, positive in _curves(probs, labels, classes):
        which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
        used = [b for b in range(bins) if np.any(which == b)]
        ax.plot([scores[which == b].mean() for b in used], [positive[which == b].mean() for b in used],
                marker="o", label=legend)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="perfect calibration")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction positive", title="Calibration",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=7)
    return _png(fig)


def value_scatter(predicted: Mapping[str, np.ndarray], truth: np.ndarray, name: str) -> str:
    """A value target: predicted against true value per series, with the identity line."""
    fig, ax = _subplots(figsize=(4.2, 4.2))
    everything = np.concatenate([truth, *predicted.values()])
    low, high = float(np.min(everything)), float(np.max(everything))
    for legend, values in predicted.items():
        ax.scatter(truth, values, s=12, alpha=0.7, label=legend)
    ax.plot([low, high], [low, high], ls=":", c="grey", lw=1, label="identity")
    ax.set(xlabel=f"true {name}", ylabel=f"predicted {name}", title="Predicted against true")
    ax.legend(loc="upper left", fontsize=7)
    return _png(fig)


def bland_altman(predicted: np.ndarray, truth: np.ndarray, name: str) -> str:
    """Agreement as cardiology reads it: the difference (predicted - true) against the mean
    of the two, with the mean difference (bias) and its 95 % limits of agreement."""
    fig, ax = _subplots(figsize=(4.6, 4.2))
    mean, diff = (predicted + truth) / 2.0, predicted - truth
    bias, spread = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    ax.scatter(mean, diff, s=12, alpha=0.7)
    for level, text in ((bias, f"bias {bias:+.2f}"), (bias + 1.96 * spread, f"+1.96 SD {bias + 1.96 * spread:+.2f}"),
                        (bias - 1.96 * spread, f"-1.96 SD {bias - 1.96 * spread:+.2f}")):
        ax.axhline(level, ls="--" if level != bias else "-", c="grey", lw=1)
        ax.annotate(text, (float(mean.max()) if len(mean) else 0.0, level), fontsize=7, ha="right", va="bottom")
    ax.set(xlabel=f"mean of predicted and true {name}", ylabel=f"predicted - true {name}", title="Bland-Altman")
    return _png(fig)


def value_calibration(predicted: np.ndarray, truth: np.ndarray, name: str, bins: int = 8) -> str:
    """Mean true value against mean predicted value in bins of equal count."""
    fig, ax = _subplots(figsize=(4.2, 4.2))
    order = np.argsort(predicted, kind="mergesort")
    groups = [g for g in np.array_split(order, min(bins, max(len(order), 1))) if len(g)]
    ax.plot([predicted[g].mean() for g in groups], [truth[g].mean() for g in groups], marker="o", label="candidate")
    low, high = float(min(predicted.min(), truth.min())), float(max(predicted.max(), truth.max()))
    ax.plot([low, high], [low, high], ls=":", c="grey", lw=1, label="perfect calibration")
    ax.set(xlabel=f"mean predicted {name}", ylabel=f"mean true {name}", title="Calibration")
    ax.legend(loc="upper left", fontsize=7)
    return _png(fig)


def frame_curves(scores: np.ndarray, truth: np.ndarray, events: Sequence[str], series: int = 4) -> str:
    """A frames target: the predicted phase score of a few eval series over their source
    frames, the labeled target where it has a weight, and the key frames marked by event."""
    from .events import KEY_EVENT, KEY_SOURCE, SCORE, SOURCE, WEIGHT

    shown = list(range(min(series, len(scores))))
    fig, axes = _subplots(len(shown) or 1, 1, figsize=(6.4, 1.6 * max(len(shown), 1)), squeeze=False)
    for row, i in enumerate(shown):
        ax = axes[row][0]
        valid = truth[i, :, SOURCE] >= 0
        x = truth[i, valid, SOURCE]
        ax.plot(x, scores[i, valid], c="C0", lw=1.4, label="predicted score")
        labeled = valid & (truth[i, :, WEIGHT] > 0)
        ax.plot(truth[i, labeled, SOURCE], truth[i, labeled, SCORE], ls=":", c="grey", lw=1, label="target")
        for kind, (name, colour) in enumerate(zip(events, ("C3", "C2"), strict=False)):
            at = truth[i, truth[i, :, KEY_EVENT] == kind + 1, KEY_SOURCE]
            for j, frame in enumerate(at):
                ax.axvline(float(frame), c=colour, lw=1, ls="--", label=f"labeled {name}" if j == 0 else None)
        ax.set(ylim=(-0.15, 1.15), ylabel=f"series {i + 1}")
        if row == 0:
            ax.legend(loc="upper right", fontsize=6, ncol=4)
    axes[-1][0].set_xlabel("source frame")
    return _png(fig)


def domain_scores(scores: Mapping[str, np.ndarray], threshold: float | None) -> str:
    """The domain score's distribution on the held-out series and on each shifted copy of
    them, with the model's threshold: what the score flags, and what it lets through."""
    fig, ax = _subplots(figsize=(5.2, 3.6))
    everything = np.concatenate([v for v in scores.values() if len(v)] or [np.zeros(1)])
    top = float(np.quantile(everything, 0.99)) * 1.05 or 1.0
    bins = np.linspace(0.0, max(top, threshold * 1.2 if threshold else 0.0), 40)
    for name, values in scores.items():
        ax.hist(np.clip(values, 0, bins[-1]), bins=bins, histtype="step", lw=1.5 if name == "held out" else 1,
                density=True, label=name)
    if threshold is not None:
        ax.axvline(threshold, ls="--", c="grey", lw=1, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="domain score", ylabel="density", title="Domain score: held out and shifted")
    ax.legend(fontsize=7)
    return _png(fig)


def confusion_matrix(probs: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Counts [true class, predicted class] at the decision rule (argmax; 0.5 for two classes)."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (labels, probs.argmax(-1)), 1)
    return matrix


def confusion_plot(probs: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> str:
    matrix = confusion_matrix(probs, labels, len(classes))
    fig, ax = _subplots(figsize=(1.6 + 1.1 * len(classes), 1.4 + 1.0 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (candidate)")
    return _png(fig)


def curves_plot(history: Sequence[Mapping[str, float]], metric: str) -> str:
    """A training curve per epoch: `metric` on the train split and `eval_<metric>` on the eval split."""
    fig, ax = _subplots(figsize=(4.6, 3.4))
    epochs = [h["epoch"] for h in history]
    for key, legend in ((metric, "train"), (f"eval_{metric}", "eval")):
        values = [h.get(key, np.nan) for h in history]
        ax.plot(epochs, values, marker=".", label=legend)
    ax.set(xlabel="epoch", ylabel=metric, title=metric)
    ax.legend(fontsize=7)
    return _png(fig)


def drivers(importance: Sequence[float], attribution: np.ndarray, most: int = 4) -> list[int]:
    """The frames that drove the decision, in time order: the `most` whose removal lowers
    the predicted probability most (temporal occlusion), else those Grad-CAM found most in."""
    if len(importance):
        ranked = sorted(range(len(importance)), key=lambda t: -importance[t])
    else:
        ranked = list(np.argsort(-attribution.reshape(len(attribution), -1).sum(axis=1), kind="stable"))
    return sorted(int(t) for t in ranked[:most])


def attribution_overlay(frames: np.ndarray, attribution: np.ndarray, picks: Sequence[int], title: str) -> str:
    """The picked frames (first channel, grey) under their Grad-CAM map (warm colours where
    the evidence for the predicted class lies), each with its frame index. Of a sequence of
    volumes, the position the map finds most in at that time."""
    fig, axes = _subplots(1, len(picks), figsize=(1.4 * len(picks), 1.7), squeeze=False)
    for ax, t in zip(axes[0], picks, strict=True):
        frame, heat = frames[t], attribution[t]
        if frames.ndim == 5:  # T, D, H, W, C
            d = int(np.argmax(heat.reshape(len(heat), -1).sum(axis=1)))
            frame, heat = frame[d], heat[d]
        ax.imshow(frame[:, :, 0], cmap="gray")
        ax.imshow(heat, cmap="inferno", alpha=0.45 * (heat > 0.05), vmin=0.0, vmax=1.0)
        ax.set_axis_off()
        ax.set_title(f"frame {t}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    return _png(fig)


def frame_strip(frames: np.ndarray, valid: int, title: str, most: int = 8) -> str:
    """Up to `most` of a series' valid frames side by side (first channel, grey; of a
    sequence of volumes, the middle position of each)."""
    if frames.ndim == 5:
        frames = frames[:, frames.shape[1] // 2]
    picks = np.unique(np.linspace(0, max(valid - 1, 0), min(most, max(valid, 1))).round().astype(int))
    fig, axes = _subplots(1, len(picks), figsize=(1.1 * len(picks), 1.35), squeeze=False)
    for ax, t in zip(axes[0], picks, strict=True):
        ax.imshow(frames[t, :, :, 0], cmap="gray")
        ax.set_axis_off()
        ax.set_title(str(t), fontsize=6)
    fig.suptitle(title, fontsize=8)
    return _png(fig)
