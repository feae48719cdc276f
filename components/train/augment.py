"""Label-preserving augmentation of whole sequences, on the training batches only.

- `flip`: mirror every frame of a sequence left-right (the same for all its frames).
- `rot90`: rotate every frame by the same multiple of 90 degrees (square frames only).
- `roll`: start a periodic sequence at another phase (cine over one heartbeat); only
  sequences without padding are rolled. Not for slice stacks, whose order is anatomy.
"""

from __future__ import annotations

import tensorflow as tf

from medseq.pipeline import features as F


def augment(inputs: dict[str, tf.Tensor], ops: tuple[str, ...]) -> dict[str, tf.Tensor]:
    frames, valid = inputs[F.FRAMES], inputs[F.VALID_FRAMES]
    batch, steps = tf.shape(frames)[0], tf.shape(frames)[1]
    if "flip" in ops:
        mirror = tf.random.uniform([batch]) < 0.5
        frames = tf.where(mirror[:, None, None, None, None], tf.reverse(frames, axis=[3]), frames)
    if "rot90" in ops and frames.shape[2] == frames.shape[3]:
        shape = tf.shape(frames)
        flat = tf.reshape(frames, tf.concat([[-1], shape[2:]], 0))
        turns = tf.random.uniform([], 0, 4, dtype=tf.int32)
        frames = tf.reshape(tf.image.rot90(flat, turns), shape)
    if "roll" in ops:
        shift = tf.random.uniform([batch], 0, steps, dtype=tf.int32)
        shift = tf.where(valid >= steps, shift, tf.zeros_like(shift))  # padded sequences stay put
        order = (tf.range(steps)[None, :] + shift[:, None]) % steps
        frames = tf.gather(frames, order, axis=1, batch_dims=1)
    return {F.FRAMES: frames, F.VALID_FRAMES: valid}
