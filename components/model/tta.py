"""Test-time augmentation (`train.tta`): a series' answer averaged over the spatial
symmetries the model was trained to ignore (train.augment's `flip` and `rot90`: the
mirror image, the four rotations of a square frame, or all eight), the way a reader
looks at an image turned about. The same average answers wherever the model does: the
epoch's eval in training (so the exported epoch is picked on it), the SavedModel's
signatures, and the frozen graph of the LiteRT and ONNX artifacts. It costs one pass
of the model per symmetry. The frame-by-frame step of a causal model and an anomaly
model's threshold read the model as it is, so neither takes it (config.py refuses).
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from ...pipeline import features as F
from ...pipeline.config import TrainConfig


def spatial_permutations(height: int, width: int, ops: tuple[str, ...]) -> np.ndarray:
    """(K, H*W) source pixel of every output pixel, for each transform the ops allow:
    the identity, its mirror image (flip), the four rotations (rot90), or all eight."""
    grid = np.arange(height * width).reshape(height, width)
    shapes = [np.rot90(grid, k) for k in range(4)] if "rot90" in ops and height == width else [grid]
    if "flip" in ops:
        shapes += [np.fliplr(g) for g in shapes]
    return np.stack([g.ravel() for g in shapes]).astype(np.int32)


def tta_table(shape: tuple[int, ...], train: TrainConfig) -> np.ndarray | None:
    """The symmetries to average over for frames of `shape` (..., H, W, C), or None
    (train.tta off, or no symmetry in train.augment that these frames allow)."""
    if not train.tta:
        return None
    table = spatial_permutations(shape[-3], shape[-2], train.augment)
    return table if len(table) > 1 else None


def averaged(model: keras.Model, inputs: Mapping[str, tf.Tensor], table: np.ndarray | None) -> tf.Tensor:
    """The model's answer to `inputs`, or with a `table` its mean over those symmetries
    of every frame (each moved by one gather of its pixels, as augment.py moves them)."""
    if table is None:
        return model(dict(inputs), training=False)
    frames = inputs[F.FRAMES]
    height, width, channels = frames.shape[-3:]
    flat = tf.reshape(frames, [tf.shape(frames)[0], -1, height * width, channels])
    answers = [model({**inputs, F.FRAMES: tf.reshape(tf.gather(flat, row, axis=2), tf.shape(frames))},
                     training=False) for row in table]
    return tf.add_n(answers) / float(len(answers))
