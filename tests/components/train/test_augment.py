"""Augmentations keep what a label depends on, are drawn from the batch seed alone, and
turn only sequences in time."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from medseq.components.train.augment import augment
from medseq.pipeline import features as F

ALL = ("flip", "rot90", "roll")


def batch(axes: list[str], valid: list[int]) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (len(axes), 6, 8, 8, 1)).astype(np.uint8)
    return {F.FRAMES: tf.constant(frames), F.VALID_FRAMES: tf.constant(valid, tf.int32),
            F.FRAME_AXIS: tf.constant(axes)}


def sorted_frames(frames: np.ndarray) -> list[list[int]]:
    return [np.sort(f.ravel()).tolist() for f in frames]


def test_cine_is_rolled_within_its_valid_frames_and_pixels_only_move():
    inputs = batch([F.AXIS_TIME] * 4, [6, 6, 3, 6])
    before, valid = inputs[F.FRAMES].numpy(), inputs[F.VALID_FRAMES].numpy()
    shifted = 0
    for seed in range(8):
        got = augment(inputs, ALL, tf.constant([seed, 1], tf.int64))[F.FRAMES].numpy()
        for b in range(4):
            n = valid[b]
            a, z = sorted_frames(before[b][:n]), sorted_frames(got[b][:n])
            shifts = [k for k in range(n) if z == a[k:] + a[:k]]
            assert shifts, f"sequence {b}: its valid frames are not a cyclic shift of themselves"
            shifted += shifts[0] != 0
            assert sorted_frames(got[b][n:]) == sorted_frames(before[b][n:])  # padding stays in its slots
    assert shifted > 0


def test_slice_stacks_and_unordered_frames_keep_their_order():
    inputs = batch([F.AXIS_SPACE, F.AXIS_INDEX, F.AXIS_SPACE], [6, 6, 4])
    before = inputs[F.FRAMES].numpy()
    for seed in range(8):
        got = augment(inputs, ALL, tf.constant([seed, 2], tf.int64))[F.FRAMES].numpy()
        for b in range(3):  # flipped or rotated frames, but each in its own place
            assert sorted_frames(got[b]) == sorted_frames(before[b])


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    inputs = batch([F.AXIS_TIME] * 4, [6, 6, 6, 6])
    one = augment(inputs, ALL, tf.constant([7, 3], tf.int64))[F.FRAMES].numpy()
    again = augment(inputs, ALL, tf.constant([7, 3], tf.int64))[F.FRAMES].numpy()
    other = augment(inputs, ALL, tf.constant([7, 4], tf.int64))[F.FRAMES].numpy()
    np.testing.assert_array_equal(one, again)
    assert not np.array_equal(one, other)


def test_no_augmentation_is_identity():
    inputs = batch([F.AXIS_TIME, F.AXIS_SPACE], [6, 6])
    out = augment(inputs, (), tf.constant([0, 0], tf.int64))
    assert out[F.FRAMES] is inputs[F.FRAMES]


def test_every_position_of_a_volume_moves_the_same_way():
    """Records of volumes (B, T, D, H, W, C): a flip or rotation is one for the whole
    sequence, every position of every volume; a roll moves whole volumes."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 200, (8, 8, 1)).astype(np.uint8)  # + 10 t + d stays below 256
    # Volume t, position d: the image plus 10 t + d, so a moved image says where it came from.
    frames = np.stack([np.stack([image + 10 * t + d for d in range(3)]) for t in range(4)])[None].repeat(2, 0)
    inputs = {F.FRAMES: tf.constant(frames), F.VALID_FRAMES: tf.constant([4, 4], tf.int32),
              F.FRAME_AXIS: tf.constant([F.AXIS_TIME] * 2)}
    moved = 0
    for seed in range(8):
        got = augment(inputs, ALL, tf.constant([seed, 5], tf.int64))[F.FRAMES].numpy()
        for b in range(2):
            offsets = got[b] - got[b, :, :1]  # each position against the first of its volume
            assert all(np.all(offsets[:, d] == d) for d in range(3))  # positions kept, moved as one
            start = int(got[b, 0, 0].astype(int).min() - image.min()) // 10
            transform = got[b, 0, 0] - 10 * start
            assert all(np.array_equal(got[b, t, 0], transform + 10 * ((start + t) % 4)) for t in range(4))
            moved += not np.array_equal(transform, image)
    assert moved > 0
