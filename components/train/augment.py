"""Label-preserving augmentation of whole sequences, on the training batches only.

- `flip`: mirror every frame of a sequence left-right (the same for all its frames).
- `rot90`: rotate every frame of a sequence by the same multiple of 90 degrees
  (square frames only). With `flip`, the eight symmetries of the square.
- `roll`: start a periodic sequence at another phase: cine over one heartbeat, i.e.
  records whose `frame_axis` is time. Only the valid frames turn; padding stays put.
  Never applied to slice stacks, to frames ordered by number only, or to the records of
  a frames target (a clip of several beats does not wrap round, and its labels sit on
  their frames).

Every draw is stateless, from the seed of the batch: the same batch of the same run is
augmented the same way, also after a restart (see dataset.train_stream).
"""

from __future__ import annotations

import tensorflow as tf

from ...pipeline import features as F
from ..io.examples import FRAME_TRUTH
from ..model.tta import spatial_permutations


def augment(parsed: dict[str, tf.Tensor], ops: tuple[str, ...], seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """`parsed` holds frames (B, T, H, W, C) or (B, T, D, H, W, C), valid_frames, frame_axis;
    returns it augmented.

    Flips and rotations are one gather of every frame's pixels through a drawn
    permutation (cheaper than transforming the whole batch once per choice).
    """
    frames, valid = parsed[F.FRAMES], parsed[F.VALID_FRAMES]
    batch, steps = tf.shape(frames)[0], tf.shape(frames)[1]
    spatial_seed, roll_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    height, width, channels = frames.shape[-3:]
    table = spatial_permutations(height, width, ops)
    if len(table) > 1:
        choice = tf.random.stateless_uniform([batch], spatial_seed, 0, len(table), dtype=tf.int32)
        # Every image of a sequence (of each volume's positions too) moves the same way.
        flat = tf.reshape(frames, [batch, -1, height * width, channels])
        moved = tf.gather(flat, tf.gather(tf.constant(table), choice), axis=2, batch_dims=1)
        frames = tf.reshape(moved, tf.shape(frames))
    if "roll" in ops and FRAME_TRUTH not in parsed:
        shift = tf.random.stateless_uniform([batch], roll_seed, 0, 2**30, dtype=tf.int32) % tf.maximum(valid, 1)
        periodic = tf.equal(parsed[F.FRAME_AXIS], F.AXIS_TIME)
        shift = tf.where(periodic, shift, tf.zeros_like(shift))
        t = tf.range(steps)[None, :]
        order = tf.where(t < valid[:, None], (t + shift[:, None]) % tf.maximum(valid[:, None], 1), t)
        frames = tf.gather(frames, order, axis=1, batch_dims=1)
    return {**parsed, F.FRAMES: frames}
