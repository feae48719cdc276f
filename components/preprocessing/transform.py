"""The one numeric preprocessing of a series, shared by ingest and `medseq predict`.

`preprocess(volume, meta, config)` is pure: numpy in, numpy out, no I/O. Both callers
feed it the decoded volume in modality units, so training and serving see the same
tensors (a test proves it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ...pipeline import features as F
from ...pipeline.config import PreprocessConfig, parse_window
from .decode import SeriesMeta

# Rec. 601 luma. Applied as three elementwise products, not `rgb @ weights`: numpy hands
# matrix products to OpenBLAS, whose kernel (chosen for the CPU at run time) fixes the
# order of the sums, and records must be the same bytes on every machine.
_LUMA = (0.299, 0.587, 0.114)


class _Sorted(np.ndarray):
    """A sorted array, on which a partition is a no-op: each of its order statistics is
    already in place. `np.percentile` partitions its input around the ranks it reads
    (`arr.partition(...)`, numpy 1.26 to 2.x), which on sorted values costs more than
    the sort (2.3 against 1.4 ms for a cine series' sample); on this view it reads them
    directly and interpolates with its own code, so the values are numpy's to the bit."""

    def partition(self, *args: object, **kwargs: object) -> None:
        return None


# Skipping numpy's partition relies on how np.percentile is written, not on its API: only
# on the numpy series the tests check it on (test_transform.py: the same values to the
# bit, and that numpy does call `partition`). Elsewhere np.percentile runs as it is.
SKIP_PARTITION = tuple(int(p) for p in np.__version__.split(".")[:2]) == (2, 4)


def sorted_percentiles(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """np.percentile of `values` (any shape), through a sort and, on the numpy the tests
    cover, without numpy's own selection."""
    ordered = np.sort(values, axis=None)
    return np.percentile(ordered.view(_Sorted) if SKIP_PARTITION else ordered, percentiles, overwrite_input=True)


@dataclass(frozen=True)
class Prepared:
    frames: np.ndarray  # (T, H, W, C) in config.dtype; (T, D, H, W, C) under four_d: volumes
    valid_frames: int
    # Of the output grid: row mm, column mm, slice mm or frame ms; under four_d: volumes
    # row mm, column mm, slice mm (along D), frame ms.
    spacing: tuple[float, ...]
    pixel_phi: tuple[str, ...] = ()  # what ingest.pixel_phi did to let the series in (pixel_phi.DECISIONS)


def _window(volume: np.ndarray, spec: str, meta: SeriesMeta, percentiles: tuple[float, float]) -> tuple[float, float]:
    """(low, scale) of the DICOM linear VOI function (PS3.3 C.11.2.1.2) onto [0, 1]
    (`_linear`), from the series' values where the window is a percentile one."""
    parsed = parse_window(spec)
    if parsed == "header" and meta.window is not None:
        center, width = meta.window
    elif isinstance(parsed, tuple):
        center, width = parsed
    else:  # percentile, or header without a window in the file
        # Every 2nd pixel of every 2nd row: the same percentiles to within noise, 4x less sorting.
        sample = volume[:, ::2, ::2] if volume.size > 1 << 18 else volume
        # Sorted first (numpy's vectorized sort is faster than its selection), then read by
        # numpy's own percentile without its selection, which a sorted array does not need.
        low, high = sorted_percentiles(sample, percentiles)
        return float(low), 1.0 / max(float(high - low), 1e-6)
    return center - 0.5 - 0.5 * (width - 1.0), 1.0 / max(width - 1.0, 1e-6)


def _linear(volume: np.ndarray, low: float, scale: float) -> np.ndarray:
    """clip((volume - low) * scale, 0, 1) in float32, without temporaries of float64."""
    out = np.subtract(volume, np.float32(low), dtype=np.float32)
    out *= np.float32(scale)
    return np.clip(out, 0.0, 1.0, out=out)


def _channels(frame: np.ndarray, windows: list[tuple[float, float]], meta: SeriesMeta,
              config: PreprocessConfig) -> np.ndarray:
    """One frame (H, W[, 3]) in modality units -> (H, W, C) in [0, 1], under `windows`
    (low, scale) computed over the whole series (`_windows`)."""
    if meta.rgb:
        # Colour images (ultrasound) carry display values: scale, no VOI window.
        rgb = np.clip(frame / meta.max_value, 0.0, 1.0)
        base = rgb if config.color == "rgb" else _luma(rgb)[..., None]
        return np.concatenate([base] * len(config.windows_for(meta.modality)), axis=-1)
    windowed = [_linear(frame, low, scale) for low, scale in windows]
    # One window (the default) needs no stacking copy: a view with a channel axis.
    out = windowed[0][..., None] if len(windowed) == 1 else np.stack(windowed, axis=-1)
    if meta.photometric == "MONOCHROME1":
        out = 1.0 - out
    if config.color == "rgb":
        out = np.repeat(out, 3, axis=-1)
    return out.astype(np.float32, copy=False)


def _windows(volume: np.ndarray, meta: SeriesMeta, config: PreprocessConfig) -> list[tuple[float, float]]:
    """(low, scale) of each channel's window, from the whole series (percentiles over all of it)."""
    return [] if meta.rgb else [_window(volume, s, meta, config.percentiles) for s in config.windows_for(meta.modality)]


def _model_frames(volume: np.ndarray, meta: SeriesMeta, config: PreprocessConfig) -> np.ndarray:
    """(N, H, W[, 3]) modality units -> (N, height, width, C) in [0, 1], one frame at a
    time: only one frame's windowed, full-size float32 copy exists at once (a series of
    large frames would otherwise hold each several times)."""
    windows = _windows(volume, meta, config)
    out: np.ndarray | None = None
    for i, frame in enumerate(volume):
        resized = model_frame(frame, windows, meta, config)
        if out is None:
            out = np.empty((len(volume), *resized.shape), np.float32)
        out[i] = resized
    return out if out is not None else np.zeros((0, config.height, config.width, 1), np.float32)


def frame_windows(volume: np.ndarray, meta: SeriesMeta, config: PreprocessConfig) -> list[tuple[float, float]]:
    """(low, scale) of each channel's window over `volume` (N, H, W[, 3]): what
    `model_frame` windows with. A stream (predict/stream.py) takes them from its first frame."""
    return _windows(volume, meta, config)


def model_frame(frame: np.ndarray, windows: list[tuple[float, float]], meta: SeriesMeta,
                config: PreprocessConfig) -> np.ndarray:
    """One frame (H, W[, 3]) in modality units -> (height, width, C) float32 in [0, 1]."""
    return np.clip(_resize_frame(_channels(frame, windows, meta, config), config.height, config.width), 0.0, 1.0)


def _luma(rgb: np.ndarray) -> np.ndarray:
    out = rgb[..., 0] * np.float32(_LUMA[0])
    out += rgb[..., 1] * np.float32(_LUMA[1])
    out += rgb[..., 2] * np.float32(_LUMA[2])
    return out


def _resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Anti-aliased bilinear resize of one frame's channels (Pillow widens the kernel
    when shrinking, so fine patterns do not alias)."""
    h, w, c = frame.shape
    if (h, w) == (height, width):
        return frame
    out = np.empty((height, width, c), np.float32)
    for k in range(c):
        image = Image.fromarray(np.ascontiguousarray(frame[:, :, k]), mode="F")
        out[:, :, k] = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return out


def temporal_indices(n: int, target: int, mode: str) -> tuple[np.ndarray, int]:
    """Which source frames fill the T output slots, and how many slots are real.

    `sample` spreads T picks uniformly over the whole sequence (up or down);
    `pad` and `average` keep every frame when n <= T and leave the rest as masked
    padding. Past T, `pad` samples, and `average` uses every frame (see `frame_weights`).
    """
    if mode in ("pad", "average") and n <= target:
        return np.arange(n), n
    if mode == "average":
        return np.arange(n), target
    return np.round(np.linspace(0, n - 1, target)).astype(np.int64), target


def frame_weights(n: int, target: int) -> np.ndarray:
    """(T, n) area weights of thick-slab averaging: slot t is the mean of the source
    interval [t n/T, (t+1) n/T), so a structure on two of 48 slices still shows."""
    edges = np.arange(target + 1) * (n / target)
    source = np.arange(n)
    overlap = np.minimum(edges[1:, None], source[None, :] + 1) - np.maximum(edges[:-1, None], source[None, :])
    return (np.clip(overlap, 0.0, None) * (target / n)).astype(np.float32)


def slab_average(volume: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(T, n) weights x (n, ...) frames -> (T, ...) float32: each slot the weighted sum of
    its source frames, accumulated in float64 in source order. Not `np.tensordot`: a
    BLAS matrix product sums in an order its CPU-specific kernel picks, so the same input
    would give other bytes on another machine (seen: OpenBLAS's Haswell and Sapphire
    Rapids kernels differ in the last bit)."""
    out = np.empty((weights.shape[0], *volume.shape[1:]), np.float32)
    acc = np.empty(volume.shape[1:], np.float64)
    term = np.empty_like(acc)
    for t, row in enumerate(weights):
        acc.fill(0.0)
        for i in np.flatnonzero(row):
            # float32 x float32 is exact in float64: only the sums round, in a fixed order.
            np.multiply(volume[i], row[i], out=term, dtype=np.float64)
            acc += term
        out[t] = acc
    return out


def picked_step(interval: float, n: int, kept: int) -> float:
    """The interval between `kept` frames picked uniformly from `n` spaced by `interval`."""
    return interval * (n - 1) / (kept - 1) if kept > 1 and n > 1 else interval


def _pixel_spacing(meta: SeriesMeta, h: int, w: int, config: PreprocessConfig) -> tuple[float, float]:
    """Row and column mm of the output grid, from an h x w image."""
    row, col = meta.pixel_spacing or (1.0, 1.0)
    return row * h / config.height, col * w / config.width


def frame_mode(meta: SeriesMeta, config: PreprocessConfig) -> str:
    """The resampling along the frame axis: `stack` for slice stacks, `temporal` otherwise."""
    return config.stack if meta.axis == F.AXIS_SPACE else config.temporal


def preprocess(volume: np.ndarray, meta: SeriesMeta, config: PreprocessConfig) -> Prepared:
    """Ordered volume in modality units -> the model's T x H x W x C tensor."""
    if volume.ndim == 3 and meta.rgb:
        volume = volume[None]
    n, h, w = volume.shape[:3]
    mode = frame_mode(meta, config)
    picks, valid = temporal_indices(n, config.frames, mode)
    if mode == "average" and n > config.frames:
        volume = slab_average(volume, frame_weights(n, config.frames))
        step = meta.interval * n / config.frames
    else:
        volume = volume[picks]
        step = picked_step(meta.interval, n, len(picks))
    resized = _model_frames(volume, meta, config)
    frames = np.zeros((config.frames, config.height, config.width, resized.shape[-1]), np.float32)
    frames[:valid] = resized
    return Prepared(stored(frames, config), valid, (*_pixel_spacing(meta, h, w, config), float(step)))


def stored(frames: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """[0, 1] float32 -> the record's dtype."""
    if config.dtype == "uint8":
        return np.round(frames * 255.0).astype(np.uint8)
    return frames.astype(config.dtype)


def depth_weights(n: int, depth: int) -> np.ndarray:
    """(D, n) weights of n slice positions onto D: thick-slab averaging down (the area
    weights of `frame_weights`, as stacks are averaged), linear interpolation up, the
    identity at n == D."""
    if n >= depth:
        return frame_weights(n, depth)
    at = np.linspace(0.0, n - 1.0, depth)
    low = np.floor(at).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    weights = np.zeros((depth, n), np.float32)
    rows = np.arange(depth)
    np.add.at(weights, (rows, low), (1.0 - (at - low)).astype(np.float32))
    np.add.at(weights, (rows, high), (at - low).astype(np.float32))
    return weights


def preprocess_volumes(volumes: np.ndarray, meta: SeriesMeta, slice_mm: float, config: PreprocessConfig) -> Prepared:
    """(P, n, H, W[, 3]) in modality units, P slice positions in order along the normal and
    the same n frames at each -> the T x D x H x W x C sequence of volumes of
    `preprocess.four_d: volumes`.

    Time is resampled as `preprocess` does (the frame axis of one position; a single time
    point is one volume, not repeated), the window is computed over the whole series (one
    mapping for every position, as a viewer shows a 4-D series), and the positions are
    resampled along the slice normal to D with `depth_weights`.
    """
    positions, n, h, w = volumes.shape[:4]
    mode = "pad" if n == 1 else frame_mode(meta, config)
    picks, valid = temporal_indices(n, config.frames, mode)
    volumes = volumes[:, picks]
    kept = len(picks)
    flat = volumes.reshape(positions * kept, *volumes.shape[2:])
    resized = _model_frames(flat, meta, config)
    stacked = resized.reshape(positions, kept, *resized.shape[1:])
    along = slab_average(stacked, depth_weights(positions, config.depth))  # (D, kept, H, W, C)
    frames = np.zeros((config.frames, config.depth, *along.shape[2:]), np.float32)
    frames[:valid] = np.moveaxis(along, 1, 0)[:valid]
    if positions >= config.depth:
        depth_mm = slice_mm * positions / config.depth
    else:
        depth_mm = picked_step(slice_mm, positions, config.depth)
    step = picked_step(meta.interval, n, kept)
    return Prepared(stored(frames, config), valid,
                    (*_pixel_spacing(meta, h, w, config), float(depth_mm), float(step)))
