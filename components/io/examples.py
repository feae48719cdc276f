"""An ingest output as every stage reads it: its `RecordSpec` (shape, dtype, classes and
the preprocessing, from qc.json, which ingest writes last), its split files, and its
tf.Examples parsed (`parse_examples`, which the exported serving signature uses too, so
a served model reads records exactly as training did); the spec a medseq model was
trained on (`load_spec`), and synthetic frames of a spec (warm-up requests and parity
checks, never a pixel of a record). `records.py` writes the records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ...pipeline import features as F
from ...pipeline.errors import InputError

SPEC_FILE = "medseq_spec.json"  # a SavedModel's RecordSpec, in assets.extra/


@dataclass(frozen=True)
class RecordSpec:
    """Static shape, dtype and classes of a record set, from its qc.json."""

    frames: int
    height: int
    width: int
    channels: int
    dtype: str
    classes: tuple[str, ...]
    preprocess: dict[str, Any] = field(default_factory=dict, compare=False)  # the ingest config
    depth: int = 0  # D of a sequence of volumes (preprocess.four_d: volumes); 0: frames are images
    # ingest.pixel_phi's `policy` (which `medseq predict` applies too) and qc.json's counts
    # of what it decided (`records`, `rejected`).
    pixel_phi: dict[str, Any] = field(default_factory=dict, compare=False)
    # The ingest bounds on one input (max_inflated_mb, max_decoded_mb, decode_timeout_s),
    # which `medseq predict` applies too (preprocessing.limits.InputLimits.from_record).
    input_limits: dict[str, Any] = field(default_factory=dict, compare=False)
    # What a record answers: "class" (`label`, an index into `classes`) or "value" (`target`,
    # a number; `value` holds its column, units, range and the train split's mean and std).
    # A model's spec may say "anomaly": a model of class records' normal class alone
    # (`value` holds {"normal": its class name}), whose answer is `anomaly_score`.
    target: str = "class"
    value: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_value(self) -> bool:
        return self.target == "value"

    @property
    def is_frames(self) -> bool:
        """Events per frame (`frame_labels`); `classes` then names the events."""
        return self.target == "frames"

    @property
    def is_anomaly(self) -> bool:
        return self.target == "anomaly"

    @property
    def normal_class(self) -> int:
        """An anomaly model's normal class, as an index into `classes`."""
        return self.classes.index(str(self.value.get("normal")))

    @property
    def units(self) -> str:
        return str(self.value.get("units") or "")

    @property
    def value_std(self) -> float:
        """A value target's train standard deviation (1 where unknown): its loss, parity and head scale."""
        return float(self.value.get("std") or 1.0)

    @property
    def output(self) -> str:
        """The name of the model's answer in every signature: `value`, `frame_values`,
        `anomaly_score`, or `probabilities`."""
        return F.VALUE if self.is_value else F.FRAME_VALUES if self.is_frames else \
            F.ANOMALY_SCORE if self.is_anomaly else F.PROBABILITIES

    @property
    def shape(self) -> tuple[int, ...]:
        """(T, H, W, C), or (T, D, H, W, C) for a sequence of volumes."""
        if self.depth:
            return (self.frames, self.depth, self.height, self.width, self.channels)
        return (self.frames, self.height, self.width, self.channels)

    @classmethod
    def of_shape(cls, shape: list[int], dtype: str, classes: tuple[str, ...],
                 preprocess: dict[str, Any], pixel_phi: dict[str, Any] | None = None,
                 input_limits: dict[str, Any] | None = None, target: str = "class",
                 value: dict[str, Any] | None = None) -> RecordSpec:
        """The spec whose `shape` is `shape` (4 or 5 values)."""
        t, *depth, h, w, c = shape
        return cls(t, h, w, c, dtype, classes, preprocess, depth[0] if depth else 0, pixel_phi or {},
                   input_limits or {}, target, value or {})

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"shape": list(self.shape), "dtype": self.dtype, "classes": list(self.classes),
               "preprocess": self.preprocess, "pixel_phi": self.pixel_phi, "input_limits": self.input_limits}
        if self.is_value or self.is_anomaly:  # class specs keep their bytes
            out.update(target=self.target, value=self.value)
        elif self.is_frames:
            out.update(target=self.target)
        return out


def _qc(examples_dir: str | Path) -> dict[str, Any]:
    """qc.json, written last by ingest: its presence marks a complete output."""
    qc_path = Path(examples_dir) / F.QC_FILE
    if not qc_path.exists():
        raise InputError(f"{examples_dir}: no {F.QC_FILE}; expected the output folder of `medseq convert`")
    qc: dict[str, Any] = json.loads(qc_path.read_text())
    return qc


def record_spec(examples_dir: str | Path) -> RecordSpec:
    qc = _qc(examples_dir)
    pre = qc["config"]["preprocess"]
    windows = next(iter(pre["windows"].values()))
    channels = len(windows) * (3 if pre["color"] == "rgb" else 1)
    depth = pre["depth"] if pre.get("four_d") == "volumes" else 0
    ingest = qc["config"].get("ingest", {})
    pixel_phi = {"policy": ingest.get("pixel_phi", {}), **qc.get("pixel_phi", {})}
    limits = {k: ingest[k] for k in ("max_inflated_mb", "max_decoded_mb", "decode_timeout_s") if k in ingest}
    target = qc.get("target", {}).get("kind", "class")
    value = {}
    if target == "value":
        train = qc.get("targets", {}).get("train", {})
        value = {k: qc["target"].get(k) for k in ("column", "units", "range")}
        value.update(mean=float(train.get("mean", 0.0)), std=float(train.get("std", 0.0)) or 1.0)
    return RecordSpec(pre["frames"], pre["height"], pre["width"], channels, pre["dtype"], tuple(qc["classes"]), pre,
                      depth, pixel_phi, limits, target, value)


def split_count(examples_dir: str | Path, split: str) -> int:
    return int(_qc(examples_dir)["records"][split])


def label_counts(examples_dir: str | Path, split: str) -> dict[str, int]:
    """{class name: records} of a split (qc.json counts labels by name)."""
    return {str(k): int(v) for k, v in _qc(examples_dir)["labels"][split].items()}


def split_files(examples_dir: str | Path, split: str) -> list[str]:
    return sorted(tf.io.gfile.glob(str(Path(examples_dir) / split / "*.tfrecord.gz")))


def parse_examples(serialized: tf.Tensor, spec: RecordSpec) -> dict[str, tf.Tensor]:
    """A batch of serialized tf.Examples -> {frames, valid_frames, label, frame_axis}, and
    `target` (NaN where absent) for the records of a value target, `frame_truth` (B, T, 6)
    for those of a frames target (`frame_truth`)."""
    features = {
        F.FRAMES: tf.io.FixedLenFeature([], tf.string),
        F.VALID_FRAMES: tf.io.FixedLenFeature([], tf.int64),
        F.LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        F.FRAME_AXIS: tf.io.FixedLenFeature([], tf.string, default_value=F.AXIS_INDEX),
    }
    if spec.is_value:
        features[F.TARGET] = tf.io.FixedLenFeature([], tf.float32, default_value=float("nan"))
    if spec.is_frames:
        features.update(_frame_features(spec.frames))
    parsed = tf.io.parse_example(serialized, features)
    frames = tf.io.decode_raw(parsed[F.FRAMES], tf.dtypes.as_dtype(spec.dtype))
    frames = tf.reshape(frames, (-1, *spec.shape))
    out = {F.FRAMES: frames, F.VALID_FRAMES: tf.cast(parsed[F.VALID_FRAMES], tf.int32),
           F.LABEL: tf.cast(parsed[F.LABEL], tf.int32), F.FRAME_AXIS: parsed[F.FRAME_AXIS]}
    if spec.is_value:
        out[F.TARGET] = parsed[F.TARGET]
    if spec.is_frames:
        out[FRAME_TRUTH] = frame_truth(parsed, spec.frames)
    return out


FRAME_TRUTH = "frame_truth"  # parse_examples' per-frame truth of a frames target (channels: model/events.py)


def _frame_features(frames: int) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """How a frames target's features parse. Defaults: a record without labels (a served
    request) has no frame with a weight."""
    return {
        F.FRAME_LABELS: tf.io.FixedLenFeature([frames], tf.float32, default_value=[0.0] * frames),
        F.FRAME_WEIGHTS: tf.io.FixedLenFeature([frames], tf.float32, default_value=[0.0] * frames),
        F.FRAME_SOURCES: tf.io.FixedLenFeature([frames], tf.float32, default_value=[-1.0] * frames),
        F.KEY_FRAMES: tf.io.VarLenFeature(tf.int64),
        F.KEY_EVENTS: tf.io.VarLenFeature(tf.int64),
        F.KEY_SOURCE_FRAMES: tf.io.VarLenFeature(tf.float32),
        F.SOURCE_INTERVAL_MS: tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
    }


def frame_truth(parsed: dict[str, tf.Tensor], frames: int) -> tf.Tensor:
    """(B, T, 6) float32 from a batch's parsed frames-target features, per output frame:
    its phase score, its weight, the event of a key frame landed there (1 + index, 0 none),
    that key frame's source frame (-1 none), the source frame shown (-1 padding), the
    source frame interval in ms (0 unknown)."""
    keys = parsed[F.KEY_FRAMES]
    where = tf.stack([keys.indices[:, 0], keys.values], -1)  # (record, output frame) of every key frame
    shape = tf.stack([tf.shape(parsed[F.FRAME_LABELS], out_type=tf.int64)[0], frames])
    event = tf.scatter_nd(where, tf.cast(parsed[F.KEY_EVENTS].values + 1, tf.float32), shape)
    source = tf.scatter_nd(where, parsed[F.KEY_SOURCE_FRAMES].values + 1.0, shape) - 1.0
    interval = tf.repeat(parsed[F.SOURCE_INTERVAL_MS], frames, axis=1)
    return tf.stack([parsed[F.FRAME_LABELS], parsed[F.FRAME_WEIGHTS], event, source, parsed[F.FRAME_SOURCES],
                     interval], -1)


def model_inputs(parsed: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """(the model's inputs, what it should answer: `target` for a value, `frame_truth`
    for frames, else `label`)."""
    answer = parsed[FRAME_TRUTH] if FRAME_TRUTH in parsed else parsed[F.TARGET] if F.TARGET in parsed \
        else parsed[F.LABEL]
    return {F.FRAMES: parsed[F.FRAMES], F.VALID_FRAMES: parsed[F.VALID_FRAMES]}, answer


def eval_dataset(files: list[str], spec: RecordSpec, batch_size: int) -> tf.data.Dataset:
    """(inputs, labels) batches of a split in file order, every record once."""
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size)
    ds = ds.map(lambda s: model_inputs(parse_examples(s, spec)), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.with_options(dataset_options()).prefetch(tf.data.AUTOTUNE)


def dataset_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Sharding is done by hand (train_stream): the strategy must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def load_spec_json(model_dir: str | Path) -> dict[str, Any]:
    """assets.extra/medseq_spec.json of a medseq SavedModel; for a file (an artifact of
    `medseq export`), the medseq_spec.json beside it."""
    model_dir = Path(model_dir)
    path = model_dir.parent / SPEC_FILE if model_dir.is_file() else model_dir / "assets.extra" / SPEC_FILE
    if not path.exists():
        raise InputError(f"{model_dir}: expected a SavedModel written by `medseq train` (with assets.extra/"
                         f"{SPEC_FILE}) or an artifact of `medseq export` ({SPEC_FILE} beside it), found none")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_spec(model_dir: str | Path) -> RecordSpec:
    data = load_spec_json(model_dir)
    return RecordSpec.of_shape(data["shape"], data["dtype"], tuple(data["classes"]), data.get("preprocess", {}),
                               data.get("pixel_phi", {}), data.get("input_limits", {}), data.get("target", "class"),
                               data.get("value", {}))


def synthetic_frames(spec: RecordSpec, batch: int, seed: int = 0) -> np.ndarray:
    """(batch, T, H, W, C) seeded noise in the model's dtype and value range."""
    rng = np.random.default_rng(seed)
    shape = (batch, *spec.shape)
    if spec.dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.random(shape).astype(spec.dtype)
