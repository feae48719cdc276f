"""The one numeric preprocessing: windows, inversion, colour, resampling, dtype."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medseq.components.preprocessing import transform
from medseq.components.preprocessing.decode import SeriesMeta
from medseq.components.preprocessing.transform import preprocess, temporal_indices
from medseq.pipeline import features as F
from medseq.pipeline.config import PreprocessConfig

META = SeriesMeta("CT", "MONOCHROME2", False, (40.0, 400.0), (0.5, 0.5), 2.0, 4095.0)


def config(**kw) -> PreprocessConfig:
    base = dict(frames=4, height=8, width=8, dtype="float32", windows={"CT": ("40/400",), "default": ("header",)})
    base.update(kw)
    return PreprocessConfig(**base)


def test_fixed_window_follows_the_dicom_linear_voi_function():
    hu = np.array([-1000.0, -160.0, 40.0, 239.5, 1000.0], np.float32).reshape(1, 1, 5).repeat(5, 1)
    out = preprocess(hu, META, config(frames=1, height=5, width=5)).frames
    np.testing.assert_allclose(out[0, 0, :, 0], [0.0, (-160 - 39.5) / 399 + 0.5, (40 - 39.5) / 399 + 0.5, 1.0, 1.0],
                               atol=1e-6)


def test_several_windows_become_channels_and_monochrome1_inverts():
    volume = np.full((3, 8, 8), 40.0, np.float32)
    cfg = config(windows={"CT": ("40/400", "-600/1500"), "default": ("header", "header")})
    out = preprocess(volume, META, cfg)
    assert out.frames.shape == (4, 8, 8, 2)
    inverted = preprocess(volume, dataclasses.replace(META, photometric="MONOCHROME1"), cfg)
    np.testing.assert_allclose(inverted.frames[:3], 1.0 - out.frames[:3], atol=1e-6)


def test_header_window_and_percentile_fallback():
    volume = np.linspace(0, 1000, 3 * 64, dtype=np.float32).reshape(3, 8, 8)
    meta = dataclasses.replace(META, modality="MR", window=None)
    out = preprocess(volume, meta, config(frames=3)).frames
    assert out.min() == pytest.approx(0.0, abs=0.02) and out.max() == pytest.approx(1.0, abs=0.02)


def test_the_percentile_of_a_sorted_view_is_numpys_percentile_to_the_bit(monkeypatch):
    """_Sorted skips numpy's partition; on sorted values that changes nothing numpy reads."""
    tested = transform.SKIP_PARTITION
    rng = np.random.default_rng(3)
    percentiles = [(0.5, 99.5), (1.0, 99.0), (0.0, 100.0), (25.0, 75.0), (33.3, 66.7)]
    for size in (1, 2, 3, 7, 100, 4097, 65536):
        for values in (rng.normal(300.0, 120.0, size), rng.integers(-1024, 3071, size), np.full(size, 7.0),
                       rng.exponential(50.0, size)):
            data = values.astype(np.float32)
            if size > 10:
                data[rng.integers(0, size, 3)] = data[0]  # ties
            for q in percentiles:
                expected = np.percentile(data.copy(), q)
                got = np.percentile(np.sort(data).view(transform._Sorted), q, overwrite_input=True)
                assert got.dtype == expected.dtype and np.array_equal(got, expected), (size, q)
                for skip in (True, False):  # the entry ingest calls, on this numpy and on any other
                    monkeypatch.setattr(transform, "SKIP_PARTITION", skip)
                    assert np.array_equal(transform.sorted_percentiles(data, q), expected), (size, q, skip)
    with_nan = rng.normal(0.0, 1.0, 1000).astype(np.float32)
    with_nan[17] = np.nan
    assert np.isnan(np.percentile(np.sort(with_nan).view(transform._Sorted), (1.0, 99.0))).all()
    # numpy does reach for the partition the view skips (else the speed-up is gone, not the values).
    calls = []
    monkeypatch.setattr(transform._Sorted, "partition", lambda self, *a, **k: calls.append(a))
    np.percentile(np.sort(data).view(transform._Sorted), (1.0, 99.0), overwrite_input=True)
    assert calls
    assert tested == (tuple(int(p) for p in np.__version__.split(".")[:2]) == (2, 4))


def test_rgb_to_gray_uses_luma_and_rgb_mode_keeps_colour():
    rgb = np.zeros((2, 8, 8, 3), np.float32)
    rgb[..., 1] = 255.0
    meta = dataclasses.replace(META, modality="US", rgb=True, max_value=255.0)
    gray = preprocess(rgb, meta, config(frames=2)).frames
    np.testing.assert_allclose(gray[..., 0], 0.587, atol=1e-5)
    colour = preprocess(rgb, meta, config(frames=2, color="rgb")).frames
    assert colour.shape[-1] == 3 and colour[..., 1].min() == pytest.approx(1.0)


def test_temporal_sampling_and_padding():
    np.testing.assert_array_equal(temporal_indices(30, 4, "sample")[0], [0, 10, 19, 29])
    picks, valid = temporal_indices(3, 5, "sample")
    assert list(picks) == [0, 0, 1, 2, 2] and valid == 5
    picks, valid = temporal_indices(3, 5, "pad")
    assert list(picks) == [0, 1, 2] and valid == 3
    volume = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 8, 8), np.float32) * 100
    out = preprocess(volume, META, config(frames=5, temporal="pad"))
    assert out.valid_frames == 3 and np.all(out.frames[3:] == 0)


def test_downsampling_is_anti_aliased():
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32) * 400 - 160  # 0 / 1 after the window
    out = preprocess(checker[None], META, config(frames=1, height=8, width=8)).frames
    # An aliasing resize would return the checkerboard's 0s or 1s; a filtered one the mean.
    assert np.abs(out - out.mean()).max() < 0.1 and out.mean() == pytest.approx(0.5, abs=0.05)


def test_uint8_output_and_spacing_of_the_output_grid():
    volume = np.full((8, 16, 32), 40.0, np.float32)
    out = preprocess(volume, META, config(dtype="uint8", frames=4, height=8, width=8))
    assert out.frames.dtype == np.uint8 and out.frames.shape == (4, 8, 8, 1)
    assert out.spacing == pytest.approx((1.0, 2.0, 2.0 * 7 / 3))


def test_thick_slab_averaging_weights_cover_every_slice_once():
    from medseq.components.preprocessing.transform import frame_weights

    w = frame_weights(48, 16)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)  # each slot a mean
    np.testing.assert_allclose(w.sum(axis=0), 16 / 48, atol=1e-6)  # each slice counted once in all
    np.testing.assert_allclose(frame_weights(20, 8)[0], [0.4, 0.4, 0.2] + [0.0] * 17, atol=1e-6)


def test_a_structure_on_two_of_48_slices_survives_averaging_and_sampling_misses_it():
    hu = np.full((48, 16, 16), -850.0, np.float32)  # lung
    hu[10:12, 6:10, 6:10] = 30.0  # a nodule on slices 10 and 11
    stack = dataclasses.replace(META, axis=F.AXIS_SPACE)
    lung = config(frames=16, height=16, width=16, windows={"CT": ("-600/1500",), "default": ("header",)})
    averaged = preprocess(hu, stack, lung).frames[..., 0]
    sampled = preprocess(hu, stack, dataclasses.replace(lung, stack="sample")).frames[..., 0]
    background = averaged[0, 0, 0]
    full = (30.0 + 850.0) / 1499.0  # the nodule's contrast in the lung window
    assert averaged[3, 8, 8] - background == pytest.approx(full * 2 / 3, abs=0.01)  # slot 3: slices 9-11
    assert np.abs(sampled - background).max() < 1e-6  # picks 0, 3, 6, 9, 13, ... step over slices 10 and 11
    assert preprocess(hu, stack, lung).spacing[2] == pytest.approx(2.0 * 3)


def test_stacks_shorter_than_t_keep_every_slice_and_mask_the_rest():
    hu = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 8, 8), np.float32) * 50
    out = preprocess(hu, dataclasses.replace(META, axis=F.AXIS_SPACE), config(frames=8))
    assert out.valid_frames == 5 and np.all(out.frames[5:] == 0)
    assert np.all(np.diff(out.frames[:5, 0, 0, 0]) > 0)  # every slice, in order


def test_series_in_time_follow_the_temporal_setting_not_the_stack_one():
    volume = np.arange(30, dtype=np.float32)[:, None, None] * np.ones((30, 8, 8), np.float32) * 10
    cine = dataclasses.replace(META, modality="MR", axis=F.AXIS_TIME, window=None)
    out = preprocess(volume, cine, config(frames=4, stack="average"))  # temporal: sample
    ramp = out.frames[:, 0, 0, 0]
    assert ramp[0] == pytest.approx(0.0, abs=0.02) and ramp[-1] == pytest.approx(1.0, abs=0.02)


_DIGEST_SCRIPT = """
import hashlib, numpy as np
from medseq.components.preprocessing import transform
from medseq.components.preprocessing.decode import SeriesMeta
from medseq.components.preprocessing.transform import preprocess
from medseq.pipeline.config import PreprocessConfig
rng = np.random.default_rng(7)
ct = rng.normal(0.0, 300.0, (48, 40, 40)).astype(np.float32)
rgb = rng.uniform(0.0, 255.0, (5, 40, 40, 3)).astype(np.float32)
cfg = PreprocessConfig(frames=16, height=32, width=32, dtype="float32")
out = preprocess(ct, SeriesMeta("CT", "MONOCHROME2", False, None, (1.0, 1.0), 2.0, 4095.0, "space"), cfg)
us = preprocess(rgb, SeriesMeta("US", "RGB", True, None, None, 33.0, 255.0, "time"), cfg)
print(hashlib.sha256(out.frames.tobytes() + us.frames.tobytes()).hexdigest())
"""


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="x86 OpenBLAS kernels")
def test_the_same_series_gives_the_same_bytes_whatever_blas_kernel_the_cpu_picks():
    """numpy's OpenBLAS picks its matrix kernel for the CPU at run time, and kernels sum
    in different orders: a record built with a BLAS product (thick-slab averaging, luma)
    would differ between machines. OPENBLAS_CORETYPE forces the kernel of older CPUs."""
    import os
    import subprocess
    import sys

    digests = set()
    for core in ("", "Prescott", "Sandybridge"):  # this CPU's own, SSE3, AVX
        env = {**os.environ, "OPENBLAS_CORETYPE": core}
        done = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT], env=env, capture_output=True, text=True,
                              check=True)
        digests.add(done.stdout.strip())
    assert len(digests) == 1
