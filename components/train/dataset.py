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

from dataclasses import dataclass

import tensorflow as tf

from ...pipeline.errors import InputError
from ..io.examples import RecordSpec, dataset_options, model_inputs, parse_examples
from .augment import augment

SHUFFLE_BUFFER = 1024  # records; a pass over a larger split is shuffled within windows of this size


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
        return model_inputs(parsed)

    ds = numbered.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.with_options(dataset_options()).prefetch(tf.data.AUTOTUNE)
