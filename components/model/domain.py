"""The training domain a model carries, and the check of a new series against it.

At train time the model records what it was trained on (`training_domain`): the
modalities, frame axes, source colours and manufacturers of its training records, and
the ranges of their valid frames, in-plane pixel spacing and frame interval (slice mm or
frame ms, by frame axis). It travels in the model's spec (assets.extra/medseq_spec.json,
`training.domain`), so every artifact of the model has it, and the model card shows it.

`findings` compares one series with it. A modality, frame axis or colour the model never
saw is a hard mismatch: `medseq predict` refuses the series (`outside_domain`, with what
it found and what the model was trained on) unless told to warn. A manufacturer never
seen, or a value outside a trained range widened by `RANGE_SLACK`, is soft: the series is
predicted and flagged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...pipeline import features as F

RANGE_SLACK = 0.25  # a range is widened by a quarter of each end before a value is flagged


@dataclass(frozen=True)
class SeriesFacts:
    """What the domain check reads of one prepared series."""

    modality: str
    manufacturer: str
    colour: str  # "grey" or "colour", of the source pixels
    frame_axis: str  # time, space or index
    valid_frames: int
    spacing: tuple[float, ...]  # row mm, column mm, slice mm or frame ms (the record's `spacing`)


@dataclass(frozen=True)
class Findings:
    hard: tuple[str, ...]  # never seen: the series is outside the domain
    soft: tuple[str, ...]  # unusual: predicted, flagged


def _range(values: Sequence[float]) -> list[float] | None:
    finite = [float(v) for v in values if v == v and v > 0]  # NaN and 0: not recorded
    return [min(finite), max(finite)] if finite else None


def training_domain(train_files: Sequence[str], examples_dir: str | Path) -> dict[str, Any]:
    """The domain of the records in `train_files` (one pass over their small features)
    and the source colours of the ingest output's qc.json."""
    import tensorflow as tf

    features = {F.MODALITY: tf.io.FixedLenFeature([], tf.string, default_value=b""),
                F.MANUFACTURER: tf.io.FixedLenFeature([], tf.string, default_value=b""),
                F.FRAME_AXIS: tf.io.FixedLenFeature([], tf.string, default_value=F.AXIS_INDEX),
                F.VALID_FRAMES: tf.io.FixedLenFeature([], tf.int64, default_value=0),
                F.SPACING: tf.io.VarLenFeature(tf.float32)}
    modalities, manufacturers, axes, frames = set(), set(), set(), []
    in_plane: list[float] = []
    interval: dict[str, list[float]] = {}

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(serialized, features)
        return {**parsed, F.SPACING: tf.sparse.to_dense(parsed[F.SPACING])}

    data = tf.data.TFRecordDataset(list(train_files), compression_type="GZIP").batch(256).map(parse)
    for batch in data.as_numpy_iterator():
        for i in range(len(batch[F.VALID_FRAMES])):
            modalities.add(batch[F.MODALITY][i].decode())
            manufacturers.add(batch[F.MANUFACTURER][i].decode())
            axis = batch[F.FRAME_AXIS][i].decode()
            axes.add(axis)
            frames.append(int(batch[F.VALID_FRAMES][i]))
            row = [float(v) for v in batch[F.SPACING][i]]
            in_plane += row[:2]
            step = frame_step(row, axis)
            if step is not None:
                interval.setdefault(axis, []).append(step[0])
    qc_path = Path(examples_dir) / F.QC_FILE
    colours = sorted(json.loads(qc_path.read_text()).get("colours", {"grey": 1})) if qc_path.exists() else ["grey"]
    return {"modalities": sorted(modalities), "frame_axes": sorted(axes), "colours": colours,
            "manufacturers": sorted(manufacturers), "valid_frames": _range(frames),
            "pixel_spacing_mm": _range(in_plane),
            "frame_interval": {axis: _range(values) for axis, values in sorted(interval.items())},
            "records": len(frames)}


def _outside(value: float, bounds: list[float] | None) -> bool:
    if bounds is None or not value == value or value <= 0:
        return False
    low, high = bounds
    return value < low * (1 - RANGE_SLACK) or value > high * (1 + RANGE_SLACK)


def frame_step(spacing: Sequence[float], axis: str) -> tuple[float, str] | None:
    """The interval between frames of a record's `spacing` and its unit: ms between the
    frames of a cine (the last value), mm between the slices of a stack (the third)."""
    if len(spacing) < 3:
        return None
    return (float(spacing[-1]), "ms") if axis == F.AXIS_TIME else (float(spacing[2]), "mm")


def findings(domain: dict[str, Any], facts: SeriesFacts) -> Findings:
    """How `facts` compare with a model's `domain` (from `training_domain`)."""
    hard, soft = [], []
    for name, value, seen in (("modality", facts.modality, domain.get("modalities")),
                              ("frame axis", facts.frame_axis, domain.get("frame_axes")),
                              ("colour", facts.colour, domain.get("colours"))):
        if seen and value not in seen:
            hard.append(f"{name} {value}, trained on {', '.join(seen)}")
    makers = domain.get("manufacturers")
    if makers and facts.manufacturer not in makers:
        soft.append(f"manufacturer {facts.manufacturer or 'unknown'}, trained on {', '.join(makers)}")
    if _outside(facts.valid_frames, domain.get("valid_frames")):
        soft.append(f"{facts.valid_frames} frames, trained on {_span(domain['valid_frames'])}")
    if len(facts.spacing) >= 2 and _outside(facts.spacing[0], domain.get("pixel_spacing_mm")):
        soft.append(f"pixel spacing {facts.spacing[0]:.3g} mm, trained on {_span(domain['pixel_spacing_mm'])} mm")
    trained = domain.get("frame_interval", {}).get(facts.frame_axis)
    step = frame_step(facts.spacing, facts.frame_axis)
    if step is not None and _outside(step[0], trained):
        soft.append(f"frame interval {step[0]:.3g} {step[1]}, trained on {_span(trained)} {step[1]}")
    return Findings(tuple(hard), tuple(soft))


def score_finding(domain: dict[str, Any], score: float) -> str | None:
    """The flag of a domain score above the model's threshold (set on its eval split)."""
    limit = domain.get("score", {}).get("threshold")
    if limit is None or score <= limit:
        return None
    share = domain["score"]["false_alarm"]
    return f"domain score {score:.2f} above {limit:.2f} (passed by {share:.0%} of the eval split)"


def _span(bounds: list[float]) -> str:
    low, high = bounds
    return f"{low:.3g}" if low == high else f"{low:.3g}-{high:.3g}"


# The soft score: how far a series' embedding (what the head reads, and the statistics of
# its frame features: `embedder`) lies from the training records' embeddings, as a
# Mahalanobis distance under a shrunk covariance,
# per dimension (about 1 for a typical training record). The mean and the inverse
# covariance are constants of the exported signatures, so every TF Serving client gets
# `domain_score`; the threshold is set on the eval split at `train.domain_false_alarm`.


def embedder(model: Any) -> Any:
    """The model up to its head: frames, valid_frames -> the sequence embedding (for a
    per-frame head, the mean of what it reads over the valid frames), beside the mean and
    log standard deviation of each frame feature over the valid frames. What the head
    reads is standardized per sequence and is about change between frames; the frame
    features' own statistics are about how the frames look (another anatomy, another
    intensity profile), which the sequence embedding alone barely sees."""
    import keras
    from keras import ops

    from ...pipeline import features as F
    from .network import FRAME_FEATURES, MaskedMean, head

    valid = model.input[F.VALID_FRAMES]
    embedded = head(model).input
    frames = embedded.shape[1] if len(embedded.shape) == 3 else model.input[F.FRAMES].shape[1]
    mask = ops.less(ops.expand_dims(ops.arange(frames, dtype="int32"), 0), ops.expand_dims(valid, -1))
    if len(embedded.shape) == 3:
        embedded = MaskedMean(dtype="float32", name="mean_over_frames_embedding")(embedded, mask)
    features = model.get_layer(FRAME_FEATURES).output
    mean = MaskedMean(dtype="float32", name="frame_feature_mean")(features, mask)
    square = MaskedMean(dtype="float32", name="frame_feature_square")(ops.square(features), mask)
    spread = 0.5 * ops.log(ops.maximum(square - ops.square(mean), 0.0) + 1e-6)
    joined = ops.concatenate([ops.cast(embedded, "float32"), mean, spread], axis=-1)
    return keras.Model(model.input, joined, name="sequence_embedding")


def outputs(model: Any, files: Sequence[str], spec: Any, batch_size: int, only: int | None = None,
            ) -> np.ndarray | None:
    """`model`'s outputs on the records of `files`, in one array (None without a record);
    with `only`, on the records of that class alone."""
    from ..io.examples import eval_dataset

    parts = []
    for inputs, labels in eval_dataset(list(files), spec, batch_size):
        found = np.asarray(model(inputs, training=False), np.float64)
        parts.append(found if only is None else found[labels.numpy() == only])
    return np.concatenate(parts) if parts else None


def embeddings(model: Any, files: Sequence[str], spec: Any, batch_size: int, only: int | None = None) -> np.ndarray:
    """The embeddings of the records of `files`; with `only`, of those of that class alone."""
    embed = embedder(model)
    found = outputs(embed, files, spec, batch_size, only)
    return found if found is not None else np.zeros((0, int(embed.output.shape[-1])))


def reference(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, inverse covariance) of the training embeddings (pooled_reference)."""
    return pooled_reference(len(train), train.sum(axis=0), train.T @ train)


def pooled_reference(n: int, total: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, inverse covariance) of n embeddings from their sum and the sum of their outer
    products (so sites can pool theirs without sharing one), the covariance shrunk toward
    its average variance by d / (n + d): a few hundred records fix no 64-dimensional
    covariance on their own."""
    d = len(total)
    mean = total / max(n, 1)
    covariance = (outer - n * np.outer(mean, mean)) / max(n - 1, 1)
    average = float(np.trace(covariance)) / d or 1.0
    shrink = d / (n + d)
    shrunk = (1 - shrink) * covariance + shrink * average * np.eye(d) + 1e-9 * average * np.eye(d)
    return mean, np.linalg.inv(shrunk)


def scores(embedded: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = embedded - mean
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, precision, centred), 0) / mean.shape[0])


def embedding_reference(model: Any, spec: Any, train_files: Sequence[str], eval_files: Sequence[str],
                        batch_size: int, false_alarm: float, only: int | None = None,
                        ) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """The reference the exported signatures score against, and its record in the spec;
    with `only`, of the records of that class alone (an anomaly model's normal series)."""
    train = embeddings(model, train_files, spec, batch_size, only)
    mean, precision = reference(train)
    held_out = embeddings(model, eval_files, spec, batch_size, only) if eval_files else train
    if not len(held_out):  # an eval split without a record of that class: the train split sets it
        held_out, eval_files = train, []
    on = scores(held_out, mean, precision)
    threshold = float(np.quantile(on, 1 - false_alarm))
    return (mean, precision), {
        "threshold": threshold, "false_alarm": false_alarm, "set_on": "eval" if eval_files else "train",
        "dimensions": int(mean.shape[0]), "fitted_on_records": int(train.shape[0]),
        "quantiles": {q: float(np.quantile(on, float(q))) for q in ("0.5", "0.9", "0.95", "0.99")}}


# Shifted copies of held-out series that the domain score should flag (evaluate measures
# it): the same anatomy as the model's own records, each moved out of the training domain
# one way. On the record's [0, 1] scale (uint8 records: / 255).
SHIFTS = ("noise", "intensity", "inverted", "corrupted")


def shifted(frames: np.ndarray, valid: np.ndarray, shift: str, rng: np.random.Generator) -> np.ndarray:
    """`frames` (B, T, ...) in the record dtype moved out of the training domain by `shift`:
    `noise` Gaussian noise of SD 0.15; `intensity` another intensity profile (gamma 0.5:
    dark tissue brightened, as another vendor's reconstruction may show it); `inverted`
    the contrast reversed (MONOCHROME1 read as MONOCHROME2, another modality's look);
    `corrupted` the second half of the valid frames replaced by uniform noise (a
    transfer or decode fault)."""
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    x = frames.astype(np.float32) / scale
    if shift == "noise":
        x = x + rng.normal(0.0, 0.15, x.shape).astype(np.float32)
    elif shift == "intensity":
        x = np.sqrt(np.clip(x, 0.0, 1.0))
    elif shift == "inverted":
        x = 1.0 - x
    elif shift == "corrupted":
        for i, v in enumerate(valid):
            half = int(v) // 2
            x[i, half:int(v)] = rng.random(x[i, half:int(v)].shape, dtype=np.float32)
    else:
        raise ValueError(f"unknown shift {shift!r}")
    x = np.clip(x, 0.0, 1.0)
    for i, v in enumerate(valid):  # padding stays padding
        x[i, int(v):] = frames[i, int(v):].astype(np.float32) / scale
    return np.round(x * 255.0).astype(np.uint8) if frames.dtype == np.uint8 else x.astype(frames.dtype)


def shift_separation(held_out: np.ndarray, by_shift: dict[str, np.ndarray], threshold: float | None) -> dict[str, Any]:
    """How the domain score parts held-out series from their shifted copies: per shift the
    AUROC (shifted as positive) and the share flagged above the model's threshold; the
    held-out share above it (the false-alarm rate the threshold was set for)."""
    from .metrics import binary_auc

    flagged = (lambda s: float(np.mean(s > threshold))) if threshold is not None else (lambda s: None)
    out: dict[str, Any] = {"threshold": threshold, "series": int(len(held_out)),
                           "false_alarm": flagged(held_out), "shifts": {}}
    for name, scored in by_shift.items():
        both = np.concatenate([held_out, scored])
        positive = np.concatenate([np.zeros(len(held_out), bool), np.ones(len(scored), bool)])
        out["shifts"][name] = {"auroc": float(binary_auc(both, positive)), "flagged": flagged(scored),
                               "median": float(np.median(scored))}
    return out


def domain_threshold(model_dir: str | Path) -> float | None:
    """The domain score threshold a model carries (set on its eval split), if any."""
    from ..io.examples import load_spec_json

    return (load_spec_json(model_dir).get("training", {}).get("domain") or {}).get("score", {}).get("threshold")
