"""tf.data over the ingest records: parse, decode the frames, batch.

The training stream is a pure function of (seed, position): pass p over the train
records is shuffled with a seed made from (seed, p), and the augmentation of batch b
draws from a stateless seed made from (seed, b). A job restarted at step s rebuilds
the stream from pass s*B // N and skips the records already seen, so it reads exactly
what the job that was killed would have read next: no iterator state is saved.

The same parsing is used inside the exported serving signature, so the served model
reads records exactly as training did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from ...pipeline import features as F
from ...pipeline.errors import InputError
from .augment import augment

SHUFFLE_BUFFER = 1024  # records; a pass over a larger split is shuffled within windows of this size


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

    @property
    def shape(self) -> tuple[int, ...]:
        """(T, H, W, C), or (T, D, H, W, C) for a sequence of volumes."""
        if self.depth:
            return (self.frames, self.depth, self.height, self.width, self.channels)
        return (self.frames, self.height, self.width, self.channels)

    @classmethod
    def of_shape(cls, shape: list[int], dtype: str, classes: tuple[str, ...],
                 preprocess: dict[str, Any], pixel_phi: dict[str, Any] | None = None,
                 input_limits: dict[str, Any] | None = None) -> RecordSpec:
        """The spec whose `shape` is `shape` (4 or 5 values)."""
        t, *depth, h, w, c = shape
        return cls(t, h, w, c, dtype, classes, preprocess, depth[0] if depth else 0, pixel_phi or {},
                   input_limits or {})

    def to_json(self) -> dict[str, object]:
        return {"shape": list(self.shape), "dtype": self.dtype, "classes": list(self.classes),
                "preprocess": self.preprocess, "pixel_phi": self.pixel_phi, "input_limits": self.input_limits}


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
    return RecordSpec(pre["frames"], pre["height"], pre["width"], channels, pre["dtype"], tuple(qc["classes"]), pre,
                      depth, pixel_phi, limits)


def split_count(examples_dir: str | Path, split: str) -> int:
    return int(_qc(examples_dir)["records"][split])


def label_counts(examples_dir: str | Path, split: str) -> dict[str, int]:
    """{class name: records} of a split (qc.json counts labels by name)."""
    return {str(k): int(v) for k, v in _qc(examples_dir)["labels"][split].items()}


def split_files(examples_dir: str | Path, split: str) -> list[str]:
    return sorted(tf.io.gfile.glob(str(Path(examples_dir) / split / "*.tfrecord.gz")))


def parse_examples(serialized: tf.Tensor, spec: RecordSpec) -> dict[str, tf.Tensor]:
    """A batch of serialized tf.Examples -> {frames, valid_frames, label, frame_axis}."""
    parsed = tf.io.parse_example(serialized, {
        F.FRAMES: tf.io.FixedLenFeature([], tf.string),
        F.VALID_FRAMES: tf.io.FixedLenFeature([], tf.int64),
        F.LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        F.FRAME_AXIS: tf.io.FixedLenFeature([], tf.string, default_value=F.AXIS_INDEX),
    })
    frames = tf.io.decode_raw(parsed[F.FRAMES], tf.dtypes.as_dtype(spec.dtype))
    frames = tf.reshape(frames, (-1, *spec.shape))
    return {F.FRAMES: frames, F.VALID_FRAMES: tf.cast(parsed[F.VALID_FRAMES], tf.int32),
            F.LABEL: tf.cast(parsed[F.LABEL], tf.int32), F.FRAME_AXIS: parsed[F.FRAME_AXIS]}


def _model_inputs(parsed: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    return {F.FRAMES: parsed[F.FRAMES], F.VALID_FRAMES: parsed[F.VALID_FRAMES]}, parsed[F.LABEL]


@dataclass(frozen=True)
class StreamPosition:
    """Where one input pipeline's stream starts: its shard of the records and a batch."""

    records: int  # in the whole split
    pipelines: int = 1
    pipeline: int = 0
    start_batch: int = 0

    @property
    def local_records(self) -> int:
        return len(range(self.pipeline, self.records, self.pipelines))


def _shuffled_pass(files: list[str], seed: tf.Tensor, position: StreamPosition) -> tf.data.Dataset:
    """One pass over a pipeline's records in an order fixed by `seed` (shape [2]) alone:
    the files in a drawn order, then windows of SHUFFLE_BUFFER records sorted by drawn
    keys (a full shuffle when the share fits one window). Stateless, so no global seed
    or iterator state is involved."""
    file_keys = tf.random.stateless_uniform([len(files)], seed)
    ordered = tf.gather(tf.constant(files), tf.argsort(file_keys))
    records = tf.data.Dataset.from_tensor_slices(ordered).flat_map(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"))
    if position.pipelines > 1:
        records = records.shard(position.pipelines, position.pipeline)

    def sort_window(index: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
        keys = tf.random.stateless_uniform(tf.shape(window), tf.stack([seed[0] + 1, seed[1] * 2**20 + index]))
        return tf.gather(window, tf.argsort(keys))

    return records.batch(SHUFFLE_BUFFER).enumerate().map(sort_window).unbatch()


def train_stream(files: list[str], spec: RecordSpec, batch_size: int, seed: int, position: StreamPosition,
                 augmentations: tuple[str, ...] = ()) -> tf.data.Dataset:
    """Endless (inputs, labels) batches of one input pipeline, from `position` on.

    Each pipeline keeps every `pipelines`-th record (its own share whatever the file
    count), passes over its share in a fresh seeded order each time, and augments
    batch b with a stateless seed of (seed, pipeline, b).
    """
    local = position.local_records
    if local < 1:
        raise InputError(f"the train split holds {position.records} records: too few for "
                         f"{position.pipelines} input pipelines")
    first_pass, offset = divmod(position.start_batch * batch_size, local)

    def one_pass(index: tf.Tensor) -> tf.data.Dataset:
        return _shuffled_pass(files, tf.stack([tf.constant(seed, tf.int64), index * 1_009 + position.pipeline]),
                              position)

    stream = tf.data.Dataset.range(first_pass, 2**40).flat_map(one_pass).skip(offset)
    batches = stream.batch(batch_size, drop_remainder=True)
    numbered = tf.data.Dataset.zip(batches, tf.data.Dataset.range(position.start_batch, 2**62))

    def prepare(serialized: tf.Tensor, batch: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        parsed = parse_examples(serialized, spec)
        if augmentations:
            stateless_seed = tf.stack([tf.constant(seed, tf.int64), batch * position.pipelines + position.pipeline])
            parsed = augment(parsed, augmentations, stateless_seed)
        return _model_inputs(parsed)

    ds = numbered.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.with_options(_options()).prefetch(tf.data.AUTOTUNE)


def eval_dataset(files: list[str], spec: RecordSpec, batch_size: int) -> tf.data.Dataset:
    """(inputs, labels) batches of a split in file order, every record once."""
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size)
    ds = ds.map(lambda s: _model_inputs(parse_examples(s, spec)), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.with_options(_options()).prefetch(tf.data.AUTOTUNE)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Sharding is done by hand (train_stream): the strategy must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
