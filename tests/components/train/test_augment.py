"""Augmentations keep what a label depends on: the set of frames and their cyclic order."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from medseq.components.train.augment import augment
from medseq.pipeline import features as F


def test_flip_rot90_roll_permute_pixels_and_phases_only():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 6, 8, 8, 1)).astype(np.uint8)
    valid = np.array([6, 6, 3, 6], np.int32)
    tf.random.set_seed(1)
    out = augment({F.FRAMES: tf.constant(frames), F.VALID_FRAMES: tf.constant(valid)}, ("flip", "rot90", "roll"))
    got = out[F.FRAMES].numpy()
    np.testing.assert_array_equal(out[F.VALID_FRAMES].numpy(), valid)
    for b in range(4):
        # Same pixel values per frame (a flip/rotation moves them), frames as a cyclic shift.
        before = [np.sort(f.ravel()).tolist() for f in frames[b]]
        after = [np.sort(f.ravel()).tolist() for f in got[b]]
        shifts = [k for k in range(6) if after == before[k:] + before[:k]]
        assert shifts, f"sequence {b} is not a cyclic shift of its frames"
        if valid[b] < 6:
            assert shifts == [0], "padded sequences must not be rolled"


def test_no_augmentation_is_identity():
    frames = tf.zeros((2, 3, 4, 4, 1), tf.uint8)
    out = augment({F.FRAMES: frames, F.VALID_FRAMES: tf.constant([3, 3])}, ())
    assert out[F.FRAMES] is frames
