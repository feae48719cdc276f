"""Order the frames of one series and prove the series is one consistent stack.

Follows highdicom's `get_volume_from_series`: a series whose shape, orientation, frame
of reference or spacing disagree, or that misses slices, is rejected with the reason
rather than warned about. Slices are ordered by ImagePositionPatient projected on the
slice normal; frames at one position by their temporal offset; InstanceNumber only
breaks ties or orders frames that carry no geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...pipeline import features as F
from . import reasons
from .four_d import grid_of, looks_4d
from .headers import FileHeader, FrameRef
from .reasons import Rejected

ORIENTATION_TOL = 1e-3  # direction cosines
POSITION_TOL_MM = 0.01
SPACING_REL_TOL = 0.05  # of the median slice interval


@dataclass(frozen=True)
class OrderedSeries:
    frames: tuple[FrameRef, ...]
    kind: str  # "spatial" (slices), "temporal" (cine at one position) or "stack" (no geometry)
    interval: float  # mm between slices, ms between frames, 0 when unknown
    duplicates: tuple[str, ...]  # paths of files dropped as exact duplicate instances
    # A 4-D series arranged per position (four_d.py): this part's slice position (0 the
    # first along the slice normal), how many there are, and the attribute that ordered time.
    position: int | None = None
    positions: int = 1
    time_attribute: str = ""
    slice_interval: float = 0.0  # mm between the positions of a 4-D series

    @property
    def axis(self) -> str:
        """What the frames step through: slice positions, time, or only their numbers."""
        if self.kind == "spatial":
            return F.AXIS_SPACE
        if self.kind == "temporal" or any(f.temporal is not None for f in self.frames):
            return F.AXIS_TIME
        return F.AXIS_INDEX


def drop_duplicates(headers: list[FileHeader]) -> tuple[list[FileHeader], list[str]]:
    """Keeps one file per SOPInstanceUID (the first path in sorted order)."""
    seen: dict[str, FileHeader] = {}
    dropped = []
    for h in sorted(headers, key=lambda h: h.path):
        if h.sop_uid in seen:
            dropped.append(h.path)
        else:
            seen[h.sop_uid] = h
    return list(seen.values()), dropped


def _check_uniform(headers: list[FileHeader]) -> None:
    first = headers[0]
    for h in headers[1:]:
        if (h.rows, h.columns, h.samples_per_pixel) != (first.rows, first.columns, first.samples_per_pixel):
            raise Rejected(reasons.INCONSISTENT_SHAPE,
                           f"expected every image {first.rows}x{first.columns}x{first.samples_per_pixel}, "
                           f"found one {h.rows}x{h.columns}x{h.samples_per_pixel}")
        if h.frame_of_reference != first.frame_of_reference:
            raise Rejected(reasons.INCONSISTENT_FRAME_OF_REFERENCE,
                           "the images do not share one Frame of Reference UID")
        if (h.pixel_spacing is None) != (first.pixel_spacing is None) or (
                h.pixel_spacing and first.pixel_spacing
                and not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=1e-3)):
            raise Rejected(reasons.INCONSISTENT_SPACING, f"expected pixel spacing {first.pixel_spacing} "
                           f"in every image, found {h.pixel_spacing}")


def _temporal_order(frames: list[FrameRef]) -> tuple[list[FrameRef], float]:
    ordered = sorted(frames, key=lambda f: (f.temporal if f.temporal is not None else 0.0,
                                            f.instance_number, f.path, f.frame))
    times = [f.temporal for f in ordered if f.temporal is not None]
    interval = float(np.median(np.diff(times))) if len(times) == len(ordered) > 1 else 0.0
    return ordered, max(interval, 0.0)


def _distances(frames: list[FrameRef]) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's distance along the slice normal (mm) and its rounded position key."""
    orientation = np.asarray(frames[0].orientation)
    nx, ny, nz = (float(v) for v in np.cross(orientation[:3], orientation[3:]))
    # Summed in Python, not np.dot (BLAS: the kernel of the CPU picks the order of the sums).
    distance = np.array([nx * f.position[0] + ny * f.position[1] + nz * f.position[2]  # type: ignore[index]
                         for f in frames])
    return distance, np.round(distance / POSITION_TOL_MM).astype(np.int64)


def _check_spacing(distances: np.ndarray) -> float:
    """The interval of positions sorted along the normal, or Rejected for gaps or unequal spacing."""
    gaps = np.diff(distances)
    interval = float(np.min(gaps))
    if np.max(np.abs(gaps - interval)) > SPACING_REL_TOL * interval + POSITION_TOL_MM:
        ratio = gaps / interval
        if np.allclose(ratio, np.round(ratio), atol=SPACING_REL_TOL):
            raise Rejected(reasons.MISSING_SLICES, f"{int(np.sum(np.round(ratio) - 1))} slice(s) missing "
                           f"from a stack spaced {interval:.3g} mm")
        raise Rejected(reasons.INCONSISTENT_SPACING, f"expected uniform slice spacing, found intervals "
                       f"from {gaps.min():.3g} to {gaps.max():.3g} mm")
    return float(np.mean(gaps))


def arrange_series(headers: list[FileHeader], four_d: str = "per_position") -> tuple[OrderedSeries, ...]:
    """The series as one ordered stack or cine, or, for a 4-D series (several frames at
    each slice position) under `four_d: per_position` or `volumes`, one time series per
    position in slice order. Raises Rejected with the reason."""
    kept, duplicates = drop_duplicates(headers)
    frames = [f for h in kept for f in h.frames]
    if len(frames) < 4 or not all(f.position and f.orientation for f in frames):
        return (order_series(headers),)
    _check_uniform(kept)
    _check_orientation(frames)
    distance, keys = _distances(frames)
    counts = np.unique(keys, return_counts=True)[1]
    if len(counts) == 1 or len(counts) == len(frames) or not looks_4d(list(counts)):
        return (order_series(headers),)
    if four_d == "reject":
        raise Rejected(reasons.DUPLICATE_POSITION, f"{len(frames)} images at {len(counts)} slice positions: a 4-D "
                       "acquisition, and preprocess.four_d is reject (per_position or volumes convert it)")
    grid = grid_of(frames, distance, keys)
    gap = _check_spacing(np.asarray(grid.slice_distances))
    return tuple(OrderedSeries(part, "temporal", grid.time_interval_ms, tuple(duplicates), position=i,
                               positions=len(grid.positions), time_attribute=grid.time_attribute,
                               slice_interval=gap)
                 for i, part in enumerate(grid.positions))


def _check_orientation(frames: list[FrameRef]) -> None:
    orientation = np.asarray(frames[0].orientation)
    for f in frames[1:]:
        if np.max(np.abs(np.asarray(f.orientation) - orientation)) > ORIENTATION_TOL:
            raise Rejected(reasons.INCONSISTENT_ORIENTATION,
                           "the images do not share one ImageOrientationPatient")


def order_series(headers: list[FileHeader]) -> OrderedSeries:
    """Orders all frames of a series (headers share one series key) or raises Rejected."""
    headers, duplicates = drop_duplicates(headers)
    _check_uniform(headers)
    frames = [f for h in headers for f in h.frames]
    if not all(f.position and f.orientation for f in frames):
        if any(f.position or f.orientation for f in frames) and len(frames) > 1:
            raise Rejected(reasons.MISSING_ATTRIBUTE, "some frames carry ImagePositionPatient/"
                           "ImageOrientationPatient and others do not")
        ordered, interval = _temporal_order(frames) if any(f.temporal is not None for f in frames) else (
            sorted(frames, key=lambda f: (f.instance_number, f.path, f.frame)), 0.0)
        return OrderedSeries(tuple(ordered), "stack", interval, tuple(duplicates))

    _check_orientation(frames)
    distance, keys = _distances(frames)
    unique = np.unique(keys)
    if len(unique) == 1:
        ordered, interval = _temporal_order(frames)
        return OrderedSeries(tuple(ordered), "temporal", interval, tuple(duplicates))
    if len(unique) != len(frames):
        raise Rejected(reasons.DUPLICATE_POSITION, f"{len(frames)} images at {len(unique)} slice positions: "
                       "a 4-D or repeated acquisition, expected one image per position")
    order = np.lexsort((np.array([f.instance_number for f in frames]), distance))
    ordered = [frames[i] for i in order]
    return OrderedSeries(tuple(ordered), "spatial", _check_spacing(distance[order]), tuple(duplicates))
