"""From a series' file headers to the model's tensor: the path both callers take."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import IO

from ...pipeline import features as F
from ...pipeline.config import PreprocessConfig
from . import reasons
from .decode import load_series
from .geometry import OrderedSeries, arrange_series
from .headers import FileHeader
from .reasons import Rejected
from .transform import Prepared, preprocess, temporal_indices


def frames_to_decode(ordered: OrderedSeries, config: PreprocessConfig) -> OrderedSeries:
    """The frames the temporal resampling will keep, in output order.

    Decoding only these (a 30-frame cine sampled to 16 reads 16 files, not 30) gives
    the same tensor layout: `preprocess` then sees exactly T frames (or fewer, to pad),
    and the interval is that of the picked frames. Stacks to `average` keep them all.
    """
    n = len(ordered.frames)
    picks, _ = temporal_indices(n, config.frames, config.stack if ordered.axis == F.AXIS_SPACE else config.temporal)
    step = ordered.interval * (n - 1) / (len(picks) - 1) if len(picks) > 1 and n > 1 else ordered.interval
    return dataclasses.replace(ordered, frames=tuple(ordered.frames[i] for i in picks), interval=step)


def prepare_series(headers: list[FileHeader], open_file: Callable[[str], IO[bytes]],
                   config: PreprocessConfig, decode_timeout_s: float | None = None
                   ) -> list[tuple[OrderedSeries, Prepared]]:
    """Order and check, decode the frames kept, preprocess; raises Rejected with the reason.
    One (ordered, prepared) for a series; one per slice position, in slice order, for a
    4-D series under `preprocess.four_d: per_position`."""
    return [_prepare(ordered, headers, open_file, config, decode_timeout_s)
            for ordered in arrange_series(headers, config.four_d)]


def _prepare(ordered: OrderedSeries, headers: list[FileHeader], open_file: Callable[[str], IO[bytes]],
             config: PreprocessConfig, decode_timeout_s: float | None) -> tuple[OrderedSeries, Prepared]:
    if len(ordered.frames) < config.min_frames:
        raise Rejected(reasons.TOO_FEW_FRAMES, f"expected at least {config.min_frames} frames, "
                       f"found {len(ordered.frames)}")
    volume, meta = load_series(frames_to_decode(ordered, config), {h.path: h for h in headers}, open_file,
                               decode_timeout_s)
    return ordered, preprocess(volume, meta, config)
