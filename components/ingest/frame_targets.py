"""Key frames onto the output frames: the per-frame target of `train.target: frames`.

A key frame of frame_labels.csv names a source frame (its index in the ordered series)
or a time (ms from the first frame). The temporal resampling keeps T of the n source
frames (preprocessing.transform.temporal_indices); a key frame lands on the output frame
whose source position is nearest its own, and keeps its source frame number, so errors
are reported in source frames and milliseconds.

The dense target is a phase score: 1 at an events[0] key frame (end-diastole), 0 at an
events[1] one (end-systole), linear between two key frames of different events, as
EchoPhaseDetection regresses. Frames between two key frames of the same event, outside
the first and last key frame, and padding carry weight 0: nothing is said about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...pipeline import features as F
from ...pipeline.config import PreprocessConfig
from ..preprocessing import reasons
from ..preprocessing.geometry import OrderedSeries
from ..preprocessing.reasons import Rejected
from ..preprocessing.transform import temporal_indices
from .labels import key_frames


@dataclass(frozen=True)
class FrameTarget:
    labels: np.ndarray  # (T,) float32 phase score
    weights: np.ndarray  # (T,) float32
    sources: np.ndarray  # (T,) float32 source frame shown by each output frame; -1 padding
    key_frames: np.ndarray  # (k,) int64 output frame of each key frame
    key_events: np.ndarray  # (k,) int64 index into events
    key_sources: np.ndarray  # (k,) float32 the key frame's source frame number
    interval_ms: float  # between source frames; 0 when unknown

    def features(self) -> dict[str, Any]:
        return {F.FRAME_LABELS: self.labels, F.FRAME_WEIGHTS: self.weights, F.FRAME_SOURCES: self.sources,
                F.KEY_FRAMES: self.key_frames.tolist(), F.KEY_EVENTS: self.key_events.tolist(),
                F.KEY_SOURCE_FRAMES: self.key_sources, F.SOURCE_INTERVAL_MS: np.asarray([self.interval_ms], np.float32)}


def source_positions(n: int, config: PreprocessConfig, axis: str) -> tuple[np.ndarray, int]:
    """(T,) the source frame each output frame shows (its centre for a thick slab; -1
    for padding), and how many output frames are real."""
    mode = config.stack if axis == F.AXIS_SPACE else config.temporal
    picks, valid = temporal_indices(n, config.frames, mode)
    out = np.full(config.frames, -1.0, np.float32)
    if mode == "average" and n > config.frames:
        out[:] = (np.arange(config.frames) + 0.5) * n / config.frames - 0.5
    else:
        out[:len(picks)] = picks
    return out, valid


def series_sources(ordered: OrderedSeries, config: PreprocessConfig) -> tuple[np.ndarray, int, int, float]:
    """(the source frame of each output frame, the real output frames, the source frames,
    ms between source frames or 0) of an ordered series (ingest and `medseq predict`)."""
    # The time points of one position (a sequence of volumes holds every position's frames).
    n = len(ordered.frames) // max(ordered.positions, 1) if ordered.position is None else len(ordered.frames)
    sources, valid = source_positions(n, config, ordered.axis)
    return sources, valid, n, float(ordered.interval) if ordered.axis == F.AXIS_TIME else 0.0


def frame_target(ordered: OrderedSeries, config: PreprocessConfig, encoded: str,
                 events: tuple[str, ...]) -> FrameTarget:
    """The series' per-frame target from its key frames; raises Rejected with the reason."""
    sources, valid, n, interval = series_sources(ordered, config)
    landed: dict[int, tuple[int, float]] = {}  # output frame -> (event, source frame)
    for key in key_frames(encoded):
        if key.unit == "time_ms":
            if interval <= 0:
                raise Rejected(reasons.BAD_FRAME_LABEL, "a key frame is given by time_ms but the series has no "
                               "frame timing; expected its frame number instead")
            at = key.at / interval
        else:
            at = key.at
        if at > n - 1 + 0.5:
            raise Rejected(reasons.FRAME_LABEL_OUT_OF_RANGE, f"a key frame ({key.unit} {key.at:g}) lies past the "
                           f"series' last frame ({n - 1}, {(n - 1) * interval:g} ms)" if interval else
                           f"a key frame ({key.unit} {key.at:g}) lies past the series' last frame ({n - 1})")
        t = int(np.argmin(np.abs(sources[:valid] - at)))
        event = events.index(key.event)
        if t in landed and landed[t][0] != event:
            raise Rejected(reasons.KEY_FRAME_COLLISION, f"key frames of {events[landed[t][0]]} and {key.event} "
                           f"land on one output frame ({t}); expected more preprocess.frames than "
                           f"{config.frames} for key frames this close")
        if t not in landed or abs(sources[t] - at) < abs(sources[t] - landed[t][1]):
            landed[t] = (event, float(at))
    if {e for e, _ in landed.values()} != {0, 1}:
        raise Rejected(reasons.NO_LABELED_SPAN, f"expected at least one key frame of each of {', '.join(events)}, "
                       f"found {', '.join(sorted({events[e] for e, _ in landed.values()}))}")
    labels = np.zeros(config.frames, np.float32)
    weights = np.zeros(config.frames, np.float32)
    order = sorted(landed)
    for t in order:
        labels[t], weights[t] = 1.0 - landed[t][0], 1.0
    for a, b in zip(order, order[1:], strict=False):
        if landed[a][0] != landed[b][0]:
            labels[a:b + 1] = np.linspace(labels[a], labels[b], b - a + 1)
            weights[a:b + 1] = 1.0
    return FrameTarget(labels, weights, sources, np.asarray(order, np.int64),
                       np.asarray([landed[t][0] for t in order], np.int64),
                       np.asarray([landed[t][1] for t in order], np.float32), interval)
