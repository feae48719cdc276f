"""4-D series: the frames of one series as a grid of slice positions x times.

A short-axis cine exported as one series (GE, Philips), DCE-MRI, CT perfusion and 4-D CT
hold several frames at each slice position. `grid_of` arranges them: positions by
ImagePositionPatient on the slice normal (as geometry.py orders a stack), times by the
one attribute that really orders them. Candidates, in order of preference: TriggerTime
and the enhanced NominalCardiacTriggerDelayTime (ms), NominalPercentageOfCardiacPhase,
TemporalPositionIdentifier and the enhanced TemporalPositionIndex (counters of the
temporal position), AcquisitionTime and ContentTime (times of day), and an enhanced
object's frame time offsets. An attribute is used only when every frame has it, it takes
as many distinct values at each position as there are times (never constant, never a
count that runs on across positions), and every position carries the same times in the
same order (the k-th times of all positions within half a time step). A grid with holes
is rejected as `incomplete_4d`; no attribute that orders as `unordered_4d`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import reasons
from .headers import FrameRef
from .reasons import Rejected

TIME_ATTRIBUTES = ("TriggerTime", "NominalCardiacTriggerDelayTime", "NominalPercentageOfCardiacPhase",
                   "TemporalPositionIdentifier", "TemporalPositionIndex", "AcquisitionTime", "ContentTime",
                   "FrameTime")
MS_PER_UNIT = {"TriggerTime": 1.0, "NominalCardiacTriggerDelayTime": 1.0, "FrameTime": 1.0,
               "AcquisitionTime": 1000.0, "ContentTime": 1000.0}  # the others order but carry no ms


@dataclass(frozen=True)
class Grid:
    """Frames at each slice position (in slice order), each position in time order."""

    positions: tuple[tuple[FrameRef, ...], ...]
    time_attribute: str
    time_interval_ms: float  # 0 where the attribute carries no time
    slice_distances: tuple[float, ...]  # of each position along the slice normal, mm


def looks_4d(counts: Sequence[int]) -> bool:
    """Several frames at most positions: a 4-D acquisition, not a stack with a repeat."""
    return max(counts) > 1 and sum(c > 1 for c in counts) * 2 >= len(counts)


def grid_of(frames: Sequence[FrameRef], distance: np.ndarray, keys: np.ndarray) -> Grid:
    """`frames` with their distances along the slice normal and their rounded position
    keys -> the grid, or Rejected (incomplete_4d, unordered_4d)."""
    unique = np.unique(keys)
    at = [[f for f, k in zip(frames, keys, strict=True) if k == key] for key in unique]
    counts = [len(p) for p in at]
    times = max(counts)
    if len(set(counts)) > 1:
        raise Rejected(reasons.INCOMPLETE_4D, f"expected {len(at)} slice positions x {times} times = "
                       f"{len(at) * times} images, found {len(frames)} (between {min(counts)} and {times} at a "
                       "position): a 4-D grid with holes")
    for attribute in TIME_ATTRIBUTES:
        ordered = _ordered_by(at, attribute)
        if ordered is not None:
            positions, interval = ordered
            centres = [float(np.mean([d for d, k in zip(distance, keys, strict=True) if k == key]))
                       for key in unique]
            return Grid(tuple(positions), attribute, interval * MS_PER_UNIT.get(attribute, 0.0), tuple(centres))
    raise Rejected(reasons.UNORDERED_4D, f"{len(frames)} images at {len(at)} slice positions, {times} at each, but "
                   f"no time attribute ({', '.join(TIME_ATTRIBUTES[:-1])}) gives every position the same "
                   "times in the same order")


def _value(frame: FrameRef, attribute: str) -> float | None:
    return next((v for k, v in frame.times if k == attribute), None)


def _ordered_by(at: list[list[FrameRef]], attribute: str) -> tuple[list[tuple[FrameRef, ...]], float] | None:
    """Each position's frames in `attribute` order and the median time step, when that
    attribute orders every position the same way; else None."""
    found = [[_value(f, attribute) for f in position] for position in at]
    if any(v is None for position in found for v in position):
        return None
    values = [[float(v) for v in position if v is not None] for position in found]
    table = np.array([sorted(position) for position in values], dtype=np.float64)  # positions x times
    steps = np.diff(table, axis=1)
    if table.shape[1] < 2 or np.any(steps <= 0):
        return None  # constant somewhere, or two frames of one position at one time
    step = float(np.median(steps))
    if np.max(np.abs(table - table[0])) > 0.5 * step:
        return None  # the positions do not share their times: a count or clock that runs on
    positions = [tuple(f for _, _, f in sorted(zip(v, [f.instance_number for f in p], p, strict=True),
                                               key=lambda t: (t[0], t[1], t[2].path, t[2].frame)))
                 for v, p in zip(values, at, strict=True)]
    return positions, step
