"""tf.data over the ingest records: parse, decode the frames, batch.

The same parsing is used inside the exported serving signature, so the served model
reads records exactly as training did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from medseq.components.train.augment import augment
from medseq.pipeline import features as F
from medseq.pipeline.errors import InputError


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

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.height, self.width, self.channels)

    def to_json(self) -> dict[str, object]:
        return {"shape": list(self.shape), "dtype": self.dtype, "classes": list(self.classes),
                "preprocess": self.preprocess}


def record_spec(examples_dir: str | Path) -> RecordSpec:
    """Reads `qc.json` (written last by ingest: its presence marks complete output)."""
    qc_path = Path(examples_dir) / F.QC_FILE
    if not qc_path.exists():
        raise InputError(f"{examples_dir}: no {F.QC_FILE}; expected the output folder of `medseq convert`")
    qc = json.loads(qc_path.read_text())
    pre = qc["config"]["preprocess"]
    windows = next(iter(pre["windows"].values()))
    channels = len(windows) * (3 if pre["color"] == "rgb" else 1)
    return RecordSpec(pre["frames"], pre["height"], pre["width"], channels, pre["dtype"], tuple(qc["classes"]), pre)


def split_count(examples_dir: str | Path, split: str) -> int:
    return int(json.loads((Path(examples_dir) / F.QC_FILE).read_text())["records"][split])


def split_files(examples_dir: str | Path, split: str) -> list[str]:
    return sorted(tf.io.gfile.glob(str(Path(examples_dir) / split / "*.tfrecord.gz")))


def parse_examples(serialized: tf.Tensor, spec: RecordSpec) -> dict[str, tf.Tensor]:
    """A batch of serialized tf.Examples -> {frames, valid_frames, label}."""
    parsed = tf.io.parse_example(serialized, {
        F.FRAMES: tf.io.FixedLenFeature([], tf.string),
        F.VALID_FRAMES: tf.io.FixedLenFeature([], tf.int64),
        F.LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    })
    frames = tf.io.decode_raw(parsed[F.FRAMES], tf.dtypes.as_dtype(spec.dtype))
    frames = tf.reshape(frames, (-1, *spec.shape))
    return {F.FRAMES: frames, F.VALID_FRAMES: tf.cast(parsed[F.VALID_FRAMES], tf.int32),
            F.LABEL: tf.cast(parsed[F.LABEL], tf.int32)}


def make_dataset(files: list[str], spec: RecordSpec, batch_size: int, shuffle: bool, seed: int,
                 repeat: bool = False, workers: int = 1, augmentations: tuple[str, ...] = ()) -> tf.data.Dataset:
    """(inputs dict, labels) batches; files are read in a fixed order for reproducibility.

    Across several workers, each reads its own files when there are enough of them,
    else every worker reads all and keeps its share of the records.
    """
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.FILE if len(files) >= workers else policy.DATA
    ds = ds.with_options(options)
    if shuffle:
        ds = ds.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size).map(lambda s: parse_examples(s, spec), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda d: ({F.FRAMES: d[F.FRAMES], F.VALID_FRAMES: d[F.VALID_FRAMES]}, d[F.LABEL]))
    if augmentations:
        ds = ds.map(lambda x, y: (augment(x, augmentations), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
