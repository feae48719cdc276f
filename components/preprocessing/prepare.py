"""From a series' file headers to the model's tensor: the path both callers take."""

from __future__ import annotations

from typing import IO, Callable

from medseq.components.preprocessing import reasons
from medseq.components.preprocessing.decode import load_series
from medseq.components.preprocessing.geometry import OrderedSeries, order_series
from medseq.components.preprocessing.headers import FileHeader
from medseq.components.preprocessing.reasons import Rejected
from medseq.components.preprocessing.transform import Prepared, preprocess
from medseq.pipeline.config import PreprocessConfig


def prepare_series(headers: list[FileHeader], open_file: Callable[[str], IO[bytes]],
                   config: PreprocessConfig) -> tuple[OrderedSeries, Prepared]:
    """Order and check, decode, preprocess; raises Rejected with the reason."""
    ordered = order_series(headers)
    if len(ordered.frames) < config.min_frames:
        raise Rejected(reasons.TOO_FEW_FRAMES, f"expected at least {config.min_frames} frames, "
                       f"found {len(ordered.frames)}")
    volume, meta = load_series(ordered, {h.path: h for h in headers}, open_file)
    return ordered, preprocess(volume, meta, config)
