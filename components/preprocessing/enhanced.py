"""Enhanced multi-frame objects: what each frame's functional groups say (position,
orientation, timing, rescale).

pydicom turns the whole Per-frame Functional Groups Sequence into a Dataset per item
and per nested sequence the first time it is read: about 0.4 ms a frame, 9 ms for a
20-frame file against 1 ms for the rest of its header. Where that sequence is a value
of defined length in explicit VR little endian and its items are plain
(`plain_file.sequence_items`), its items are read as raw elements (`RawItem`) and their
values through `HeaderValues`, exactly as from pydicom's items; a value that is not
plain (or anything else odd) marks the read (`Fallback`), whose result is then replaced
by one from pydicom's own sequence, so each file gives the same values either way
(tests/components/preprocessing/test_header_values.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from .header_values import Fallback, HeaderValues, RawItem, raw_sequence
from .plain_file import PER_FRAME_GROUPS, sequence_items

_PER_FRAME = "PerFrameFunctionalGroupsSequence"
T = TypeVar("T")
Node = Dataset | RawItem


def _plain_per_frame(ds: Dataset, fallback: Fallback) -> list[RawItem] | None:
    raw = raw_sequence(ds.get_item(BaseTag(PER_FRAME_GROUPS), keep_deferred=True))
    if raw is None or not HeaderValues(ds).lean:
        return None
    items = sequence_items(*raw)
    return [RawItem(item, fallback) for item in items] if items is not None else None


def with_per_frame(ds: Dataset, use: Callable[[Sequence[Node] | None], T]) -> T:
    """`use(the per-frame functional groups)`: from their raw items where they are plain,
    else (or where a value is not: the items' shared `Fallback` says so) from pydicom's
    sequence. A failure of `use` on raw items whose fallback is set is the value pydicom
    reads differently; any other failure is the caller's."""
    fallback = Fallback()
    plain = _plain_per_frame(ds, fallback)
    if plain is not None:
        try:
            result = use(plain)
        except Exception:
            if not fallback.needed:
                raise
        else:
            if not fallback.needed:
                return result
    return use(ds.get(_PER_FRAME))


def first_item(node: Node | HeaderValues | None, *path: str) -> Node | None:
    """Walks nested sequences, taking the first item of each: first_item(fg, 'PlanePositionSequence')."""
    current: Node | None = node.ds if isinstance(node, HeaderValues) else node
    for name in path:
        seq = current.get(name) if current is not None else None
        current = seq[0] if seq else None
    return current


def frames_geometry(ds: Dataset, per_frame: Sequence[Node] | None,
                    time_offsets: list[float | None]) -> list[tuple[Any, Any, Any, tuple[tuple[str, float], ...]]]:
    """(position, orientation, temporal, time candidates) of each frame of a multi-frame object."""
    shared = first_item(ds, "SharedFunctionalGroupsSequence")
    found: list[Any] = []

    def shared_orient() -> Any:  # read where a frame has no orientation of its own, once
        if not found:
            found.append(first_item(shared, "PlaneOrientationSequence") if shared is not None else None)
        return found[0]
    return [_frame_geometry(per_frame, shared_orient, i, offset) for i, offset in enumerate(time_offsets)]


def _frame_geometry(per_frame: Sequence[Node] | None, shared_orient: Callable[[], Any], index: int,
                    time_offset: float | None) -> tuple[Any, Any, Any, tuple[tuple[str, float], ...]]:
    item = per_frame[index] if per_frame and index < len(per_frame) else None
    pos = first_item(item, "PlanePositionSequence") if item is not None else None
    orient = (first_item(item, "PlaneOrientationSequence") if item is not None else None) or shared_orient()
    cardiac = first_item(item, "CardiacSynchronizationSequence") if item is not None else None
    cardiac_values = HeaderValues(cardiac) if cardiac is not None else None
    temporal = cardiac_values.get("NominalCardiacTriggerDelayTime") if cardiac_values is not None else None
    content = first_item(item, "FrameContentSequence") if item is not None else None
    index_value = HeaderValues(content).get("TemporalPositionIndex") if content is not None else None
    times = [("NominalCardiacTriggerDelayTime", temporal),
             ("NominalPercentageOfCardiacPhase",
              cardiac_values.get("NominalPercentageOfCardiacPhase") if cardiac_values is not None else None),
             ("TemporalPositionIndex", index_value), ("FrameTime", time_offset)]
    if temporal is None and index_value is not None:
        temporal = float(index_value)  # an index: orders, carries no ms
    if temporal is None:
        temporal = time_offset
    return (HeaderValues(pos).get("ImagePositionPatient") if pos is not None else None,
            HeaderValues(orient).get("ImageOrientationPatient") if orient is not None else None, temporal,
            tuple((k, float(v)) for k, v in times if isinstance(v, (int, float)) and not isinstance(v, bool)))


def _rescale_of(per_frame: Sequence[Node] | None, shared: Node | None, frame: int) -> tuple[float, float] | None:
    """(slope, intercept) from an enhanced object's functional groups, if it has them."""
    for group in ((per_frame[frame] if per_frame and frame < len(per_frame) else None), shared):
        item = first_item(group, "PixelValueTransformationSequence") if group is not None else None
        values = HeaderValues(item) if item is not None else None
        if values is not None and "RescaleSlope" in values:
            return float(values.get("RescaleSlope")), float(values.get("RescaleIntercept", 0.0))
    return None


def frame_rescales(ds: Dataset, n_frames: int) -> tuple[tuple[float, float], ...] | None:
    """(slope, intercept) of each frame of an enhanced object; None when it has none."""
    shared = first_item(ds, "SharedFunctionalGroupsSequence")

    def rescales(per_frame: Sequence[Node] | None) -> tuple[tuple[float, float], ...] | None:
        if _rescale_of(per_frame, shared, 0) is None:
            return None
        return tuple(_rescale_of(per_frame, shared, i) or (1.0, 0.0) for i in range(n_frames))
    return with_per_frame(ds, rescales)
