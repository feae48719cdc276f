"""Ordering and consistency on pydicom's real multi-slice series and on planted faults."""

from __future__ import annotations

import dataclasses
import random

import pytest

from medseq.components.preprocessing import reasons
from medseq.components.preprocessing.geometry import order_series
from medseq.components.preprocessing.headers import FileHeader, read_header
from medseq.components.preprocessing.reasons import Rejected


def headers_of(folder):
    out = []
    for path in sorted(folder.iterdir()):
        with open(path, "rb") as f:
            out.append(read_header(f, str(path)))
    return out


def rejected_code(headers) -> str:
    with pytest.raises(Rejected) as exc:
        order_series(headers)
    return exc.value.code


def test_ct_series_comes_out_in_geometric_order(pydicom_files):
    headers = headers_of(pydicom_files / "dicomdirtests" / "98892001" / "CT5N")
    random.Random(0).shuffle(headers)
    ordered = order_series(headers)
    z = [f.position[2] for f in ordered.frames]
    assert z == sorted(z) and len(z) == 5
    # InstanceNumber runs the other way here: ordering by it alone would flip the stack.
    assert [f.instance_number for f in ordered.frames] == [10, 9, 8, 7, 6]
    assert ordered.kind == "spatial" and ordered.interval == pytest.approx(2.5)


def test_order_does_not_depend_on_input_order(pydicom_files):
    headers = headers_of(pydicom_files / "dicomdirtests" / "98892001" / "CT5N")
    first = [f.path for f in order_series(headers).frames]
    assert [f.path for f in order_series(headers[::-1]).frames] == first


def test_gap_in_a_stack_is_missing_slices(pydicom_files):
    headers = headers_of(pydicom_files / "dicomdirtests" / "77654033" / "CT2")
    assert rejected_code(headers) == reasons.MISSING_SLICES


@pytest.mark.parametrize("folder", ["98892003/MR700", "98892001/CT2N"])
def test_mixed_orientations_are_rejected(pydicom_files, folder):
    headers = headers_of(pydicom_files / "dicomdirtests" / folder)
    assert rejected_code(headers) == reasons.INCONSISTENT_ORIENTATION


def _stack(n=5, dz=2.0) -> list[FileHeader]:
    from medseq.components.preprocessing.headers import FrameRef

    out = []
    for k in range(n):
        frame = FrameRef(f"f{k}", 0, f"1.2.{k}", k + 1, (0.0, 0.0, k * dz), (1, 0, 0, 0, 1, 0), None)
        out.append(FileHeader(f"f{k}", "1.2", f"1.2.{k}", "P", "I", "CT", "V", "1.9", 16, 16, 1,
                              "MONOCHROME2", "1.2.840.10008.1.2.1", (0.5, 0.5), False, (frame,)))
    return out


def test_planted_inconsistencies_are_rejected_with_reasons():
    stack = _stack()
    assert order_series(stack).kind == "spatial"
    assert rejected_code([*stack[:2], dataclasses.replace(stack[2], rows=32), *stack[3:]]) == reasons.INCONSISTENT_SHAPE
    assert rejected_code([*stack[:4], dataclasses.replace(stack[4], frame_of_reference="1.8")]) \
        == reasons.INCONSISTENT_FRAME_OF_REFERENCE
    assert rejected_code([*stack[:4], dataclasses.replace(stack[4], pixel_spacing=(0.7, 0.7))]) \
        == reasons.INCONSISTENT_SPACING
    moved = dataclasses.replace(stack[2].frames[0], position=(0.0, 0.0, 3.1))
    assert rejected_code([*stack[:2], dataclasses.replace(stack[2], frames=(moved,)), *stack[3:]]) \
        == reasons.INCONSISTENT_SPACING
    twin = dataclasses.replace(stack[1], sop_uid="1.2.99", path="g",
                               frames=(dataclasses.replace(stack[1].frames[0], path="g", sop_uid="1.2.99"),))
    assert rejected_code([*stack, twin]) == reasons.DUPLICATE_POSITION


def test_exact_duplicates_are_dropped_and_reported():
    stack = _stack()
    copy = dataclasses.replace(stack[3], path="zz-copy")
    ordered = order_series([*stack, copy])
    assert len(ordered.frames) == 5 and ordered.duplicates == ("zz-copy",)


def test_cine_frames_order_by_trigger_time():
    from medseq.components.preprocessing.headers import FrameRef

    headers = []
    for k, t in enumerate([300.0, 0.0, 100.0, 200.0]):
        frame = FrameRef(f"c{k}", 0, f"1.3.{k}", 4 - k, (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0), t)
        headers.append(FileHeader(f"c{k}", "1.3", f"1.3.{k}", "P", "I", "MR", "V", "1.9", 8, 8, 1,
                                  "MONOCHROME2", "1.2.840.10008.1.2.1", (1.0, 1.0), False, (frame,)))
    ordered = order_series(headers)
    assert ordered.kind == "temporal" and [f.temporal for f in ordered.frames] == [0, 100, 200, 300]
    assert ordered.interval == pytest.approx(100.0)


def test_only_the_frames_kept_by_temporal_sampling_are_decoded():
    from medseq.components.preprocessing.geometry import OrderedSeries
    from medseq.components.preprocessing.headers import FrameRef
    from medseq.components.preprocessing.prepare import frames_to_decode
    from medseq.pipeline.config import PreprocessConfig

    frames = tuple(FrameRef(f"f{k}", 0, str(k), k, None, None, 40.0 * k) for k in range(30))
    ordered = OrderedSeries(frames, "temporal", 40.0, ())
    kept = frames_to_decode(ordered, PreprocessConfig(frames=16))
    assert len(kept.frames) == 16 and kept.frames[0] is frames[0] and kept.frames[-1] is frames[-1]
    assert kept.interval == pytest.approx(40.0 * 29 / 15)
    padded = frames_to_decode(OrderedSeries(frames[:5], "temporal", 40.0, ()),
                              PreprocessConfig(frames=16, temporal="pad"))
    assert len(padded.frames) == 5 and padded.interval == pytest.approx(40.0)


def test_what_the_frames_step_through():
    from medseq.components.preprocessing.geometry import OrderedSeries
    from medseq.components.preprocessing.headers import FrameRef
    from medseq.pipeline import features as F

    timed = tuple(FrameRef(f"f{k}", 0, str(k), k, None, None, 40.0 * k) for k in range(3))
    numbered = tuple(FrameRef(f"f{k}", 0, str(k), k, None, None, None) for k in range(3))
    assert order_series(_stack()).axis == F.AXIS_SPACE
    assert OrderedSeries(timed, "temporal", 40.0, ()).axis == F.AXIS_TIME
    assert OrderedSeries(timed, "stack", 40.0, ()).axis == F.AXIS_TIME  # a clip with frame times
    assert OrderedSeries(numbered, "stack", 0.0, ()).axis == F.AXIS_INDEX
