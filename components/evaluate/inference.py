"""The candidate's predictions on every eval series, as served, and on two controls
that take time away from it.

- `frames`: the records as they are;
- `shuffled`: the valid frames of each series in a seeded random order;
- `one_frame`: the middle valid frame repeated over all valid positions.

An anomaly model's score (train.target: anomaly) is read as the probability of the
classes other than its normal one (`anomaly_probabilities`), so its AUC, gate and report
are a class model's.

A model that reads the sequence loses AUC on the controls (R² for a value; for events
per frame, its event error rises: the labels stay on their frames); one that looks at a
single frame does not. Predictions go through the exported `predict_frames` signature, the
one TF Serving runs. Its `domain_score` is also taken on shifted copies of the records
(`SHIFTS`: model/domain.py's, and another task's series): how well the score flags
input the model never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ...pipeline import features as F
from ...pipeline.errors import InputError
from ..io.examples import FRAME_TRUTH, load_spec, load_spec_json, parse_examples, split_files
from ..model.domain import SHIFTS as PIXEL_SHIFTS
from ..model.domain import shifted
from ..synth import series_frames

VARIANTS = ("frames", "shuffled", "one_frame")
# The shifted copies the domain score is measured on: model/domain.py's pixel shifts, and
# each series replaced by a synthetic series of another task (`other_task`).
OTHER_TASK = "other_task"
SHIFTS = (*PIXEL_SHIFTS, OTHER_TASK)
PREDICTIONS_FILE = "predictions.json"  # written by evaluate beside BLESSED: the run report redraws from it
BATCH = 32


@dataclass(frozen=True)
class EvalPredictions:
    labels: np.ndarray  # (N,) class index, the true value of a value target, or a frames target's truth (N, T, 6)
    slices: dict[str, np.ndarray] = field(repr=False)  # slice feature -> (N,) str values
    probs: dict[str, np.ndarray] = field(repr=False)  # variant -> (N, K), (N,) values, or (N, T) frame scores
    # A model that gives `domain_score`: its score on the records ("frames") and on their
    # shifted copies (model/domain.py SHIFTS), (N,) each.
    domain: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def is_value(self) -> bool:
        return self.probs["frames"].ndim == 1

    @property
    def is_frames(self) -> bool:
        return self.labels.ndim == 3

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, feature: str, value: str) -> np.ndarray:
        return self.slices[feature] == value

    def to_json(self) -> dict[str, object]:
        """Labels, slice values (keyed hashes for sites) and probabilities: no pixel, no identifier."""
        return {"labels": self.labels.tolist(), "slices": {k: v.tolist() for k, v in self.slices.items()},
                "probs": {k: v.tolist() for k, v in self.probs.items()},
                "domain": {k: v.tolist() for k, v in self.domain.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalPredictions:
        value = np.asarray(data["probs"]["frames"]).ndim == 1 or np.asarray(data["labels"]).ndim == 3
        return cls(np.asarray(data["labels"], np.float64 if value else np.int64),
                   {k: np.asarray(v, dtype=object) for k, v in data["slices"].items()},
                   {k: np.asarray(v, np.float64) for k, v in data["probs"].items()},
                   {k: np.asarray(v, np.float64) for k, v in data.get("domain", {}).items()})


def anomaly_probabilities(score: np.ndarray, classes: int, normal: int) -> np.ndarray:
    """An anomaly model's scores (N,) as the class probabilities every class metric, the
    gate and the report read (N, K): s / (1 + s), a monotone map of the score to [0, 1),
    shared by the classes other than `normal`, which gets the rest. Its AUC is the score's
    AUC of normal against the others."""
    share = score / (1.0 + np.maximum(score, 0.0))
    out = np.repeat((share / max(classes - 1, 1))[:, None], classes, axis=1)
    out[:, normal] = 1.0 - share
    return out


def other_task(frames: np.ndarray, valid: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`frames` (B, T, [D,] H, W, C) with each series' valid frames replaced by a synthetic
    series of another task (`kind` ct or cine, synth.series_frames; a volume's slices are
    consecutive images of it), padding kept."""
    out = frames.copy()
    image = frames.shape[2:-1]  # ([D,] H, W)
    h, w = image[-2:]
    for i, v in enumerate(valid):
        n = int(v) * int(np.prod(image[:-2], dtype=np.int64))
        series = series_frames(kind, n, max(h, w), rng)[:, :h, :w].reshape(int(v), *image, 1)
        out[i, :int(v)] = np.round(series * 255.0).astype(np.uint8) if frames.dtype == np.uint8 \
            else series.astype(frames.dtype)
    return out


def shuffle_frames(frames: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = frames.copy()
    for i, v in enumerate(valid):
        out[i, :v] = frames[i, rng.permutation(int(v))]
    return out


def repeat_one_frame(frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = frames.copy()
    for i, v in enumerate(valid):
        out[i, :v] = frames[i, int(v) // 2]
    return out


def _records(examples_dir: str, split: str, spec_model_dir: str) -> tf.data.Dataset:
    files = split_files(examples_dir, split)
    if not files:
        raise InputError(f"{examples_dir}/{split}: no records to evaluate on")
    spec = load_spec(spec_model_dir)

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = parse_examples(serialized, spec)
        slices = tf.io.parse_example(serialized, {
            name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in F.SLICE_FEATURES})
        return {**parsed, **slices}

    return tf.data.TFRecordDataset(files, compression_type="GZIP").batch(BATCH).map(parse)


def predict_split(examples_dir: str, model_dir: str | Path, seed: int = 0, split: str = "eval",
                  controls: bool = True) -> EvalPredictions:
    """Probabilities of the SavedModel at `model_dir` on every record of `split`; with
    `controls`, also on the shuffled and the one-frame inputs, and, where the model gives
    a domain score, that score on the records and on their shifted copies."""
    serve = tf.saved_model.load(str(model_dir)).signatures[F.FRAMES_SIGNATURE]
    spec = load_spec(model_dir)
    output = spec.output
    trained_on = load_spec_json(model_dir).get("training", {}).get("domain", {}).get("modalities", ())
    other = "cine" if "CT" in trained_on else "ct"  # a chest CT slab, or a cine MR to a model that saw CT
    scored = controls and F.DOMAIN_SCORE in serve.structured_outputs
    domain: dict[str, list[np.ndarray]] = {name: [] for name in (("frames", *SHIFTS) if scored else ())}
    rng = np.random.default_rng(seed)
    labels: list[np.ndarray] = []
    slices: dict[str, list[np.ndarray]] = {name: [] for name in F.SLICE_FEATURES}
    probs: dict[str, list[np.ndarray]] = {name: [] for name in (VARIANTS if controls else VARIANTS[:1])}
    for batch in _records(examples_dir, split, str(model_dir)).as_numpy_iterator():
        frames, valid = batch[F.FRAMES], batch[F.VALID_FRAMES]
        inputs = {"frames": frames}
        if controls:
            inputs.update(shuffled=shuffle_frames(frames, valid, rng), one_frame=repeat_one_frame(frames, valid))
        for name, x in inputs.items():
            out = serve(**{F.FRAMES: tf.constant(x), F.VALID_FRAMES: tf.constant(valid)})
            answer = out[output].numpy().astype(np.float64)
            probs[name].append(anomaly_probabilities(answer, len(spec.classes), spec.normal_class)
                               if spec.is_anomaly else answer)
            if scored and name == "frames":
                domain[name].append(out[F.DOMAIN_SCORE].numpy().astype(np.float64))
        for shift in SHIFTS if scored else ():
            moved = (other_task(frames, valid, other, rng) if shift == OTHER_TASK
                     else shifted(frames, valid, shift, rng))
            out = serve(**{F.FRAMES: tf.constant(moved), F.VALID_FRAMES: tf.constant(valid)})
            domain[shift].append(out[F.DOMAIN_SCORE].numpy().astype(np.float64))
        labels.append(batch[F.TARGET] if output == F.VALUE else batch[FRAME_TRUTH] if output == F.FRAME_VALUES
                      else batch[F.LABEL])
        for name in F.SLICE_FEATURES:
            slices[name].append(np.array([v.decode() for v in batch[name]], dtype=object))
    return EvalPredictions(np.concatenate(labels), {k: np.concatenate(v) for k, v in slices.items()},
                           {k: np.concatenate(v) for k, v in probs.items()},
                           {k: np.concatenate(v) for k, v in domain.items()})
