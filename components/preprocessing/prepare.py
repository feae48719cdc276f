"""From a series' file headers to the model's tensor: the path both callers take."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import IO

import numpy as np

from ...pipeline import features as F
from ...pipeline.config import SAFE_PIXEL_PHI, PixelPhiConfig, PreprocessConfig
from . import pixel_phi, reasons
from .decode import SeriesMeta, load_series
from .geometry import OrderedSeries, arrange_series
from .headers import FileHeader
from .limits import DEFAULT_LIMITS, InputLimits, check_series
from .reasons import Rejected
from .transform import Prepared, picked_step, preprocess, preprocess_volumes, temporal_indices


def frames_to_decode(ordered: OrderedSeries, config: PreprocessConfig) -> OrderedSeries:
    """The frames the temporal resampling will keep, in output order.

    Decoding only these (a 30-frame cine sampled to 16 reads 16 files, not 30) gives
    the same tensor layout: `preprocess` then sees exactly T frames (or fewer, to pad),
    and the interval is that of the picked frames. Stacks to `average` keep them all.
    """
    n = len(ordered.frames)
    picks, _ = temporal_indices(n, config.frames, config.stack if ordered.axis == F.AXIS_SPACE else config.temporal)
    step = picked_step(ordered.interval, n, len(picks))
    return dataclasses.replace(ordered, frames=tuple(ordered.frames[i] for i in picks), interval=step)


def prepare_series(headers: list[FileHeader], open_file: Callable[[str], IO[bytes]],
                   config: PreprocessConfig, limits: InputLimits = DEFAULT_LIMITS,
                   phi: PixelPhiConfig = SAFE_PIXEL_PHI) -> list[tuple[OrderedSeries, Prepared]]:
    """Order and check, decode the frames kept (within `limits`), preprocess; raises
    Rejected with the reason.
    One (ordered, prepared) for a series; one per slice position, in slice order, for a
    4-D series under `preprocess.four_d: per_position`; one sequence of volumes for any
    series under `volumes`. `phi` (ingest.pixel_phi) screens the headers first and keeps
    only the imaging regions of ultrasound; each Prepared names what it decided."""
    screened = pixel_phi.screen(headers, phi)
    parts = arrange_series(headers, config.four_d)
    by_path = {h.path: h for h in headers}
    load = _Loader(by_path, open_file, limits, phi)
    if config.volumes:
        prepared = [_prepare_volumes(parts, load, config)]
    elif len(parts) > 1 and len({f.path for p in parts for f in p.frames}) == 1:
        # One enhanced object holding every position: decoded once, not once per position.
        _check_frames(len(parts[0].frames), config)
        volumes, meta = decode_positions(parts, load, config)
        prepared = [(part, preprocess(volume, meta, config)) for part, volume in zip(parts, volumes, strict=True)]
    else:
        prepared = [_prepare(ordered, load, config) for ordered in parts]
    decisions = screened + load.decisions
    return [(o, dataclasses.replace(p, pixel_phi=decisions)) for o, p in prepared] if decisions else prepared


class _Loader:
    """`load_series` on the files of one series, then only its imaging area (pixel_phi)."""

    def __init__(self, headers: dict[str, FileHeader], open_file: Callable[[str], IO[bytes]],
                 limits: InputLimits, phi: PixelPhiConfig) -> None:
        self.headers, self.open_file, self.limits, self.phi = headers, open_file, limits, phi
        self.decisions: tuple[str, ...] = ()

    def __call__(self, ordered: OrderedSeries) -> tuple[np.ndarray, SeriesMeta]:
        first = self.headers[ordered.frames[0].path]
        # What the frames kept take as float32, repeats included, before any is decoded.
        check_series(len(ordered.frames), first.rows, first.columns, first.samples_per_pixel,
                     self.limits.max_decoded)
        volume, meta = load_series(ordered, self.headers, self.open_file, self.limits.decode_timeout_s)
        volume, self.decisions = pixel_phi.imaging_area(volume, ordered.frames, self.headers, self.phi)
        return volume, meta


def decode_positions(positions: tuple[OrderedSeries, ...], load: Callable[[OrderedSeries], tuple[np.ndarray,
                                                                                               SeriesMeta]],
                     config: PreprocessConfig) -> tuple[np.ndarray, SeriesMeta]:
    """(P, n, H, W[, 3]): the frames the resampling keeps at each position (the same n at
    every one), from one pass over the files; the meta of the first position's file."""
    kept = [frames_to_decode(p, config) for p in positions]
    merged = dataclasses.replace(kept[0], frames=tuple(f for k in kept for f in k.frames))
    volume, meta = load(merged)
    return volume.reshape(len(kept), len(kept[0].frames), *volume.shape[1:]), meta


def _check_frames(count: int, config: PreprocessConfig) -> None:
    if count < config.min_frames:
        raise Rejected(reasons.TOO_FEW_FRAMES, f"expected at least {config.min_frames} frames, found {count}")


def _prepare(ordered: OrderedSeries, load: _Loader, config: PreprocessConfig) -> tuple[OrderedSeries, Prepared]:
    _check_frames(len(ordered.frames), config)
    volume, meta = load(frames_to_decode(ordered, config))
    return ordered, preprocess(volume, meta, config)


def as_positions(parts: tuple[OrderedSeries, ...]) -> tuple[tuple[OrderedSeries, ...], float]:
    """The parts of a series as positions x times, and the mm between positions: the
    positions of a 4-D series; a slice stack's slices (one time point each); a cine or
    clip at one position."""
    if len(parts) > 1:
        return parts, parts[0].slice_interval
    series = parts[0]
    if series.axis == F.AXIS_SPACE:
        return tuple(dataclasses.replace(series, frames=(f,)) for f in series.frames), series.interval
    return parts, 0.0


def _prepare_volumes(parts: tuple[OrderedSeries, ...], load: _Loader,
                     config: PreprocessConfig) -> tuple[OrderedSeries, Prepared]:
    _check_frames(len(parts[0].frames), config)  # frames at one position, or slices of a stack
    positions, slice_mm = as_positions(parts)
    volume, meta = decode_positions(positions, load, config)
    first = parts[0]
    ordered = dataclasses.replace(first, frames=tuple(f for p in parts for f in p.frames), position=None)
    return ordered, preprocess_volumes(volume, meta, slice_mm, config)
