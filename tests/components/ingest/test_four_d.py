"""4-D series: a multi-slice cine in one series converts to one time-series record per
slice position, each with the frames (in time order) that the same cine gives when it is
written one series per slice; holes, no usable time and `four_d: reject` are rejections."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf

from helpers import CINE, KEY, POSITIONS, SAMPLES, SLICE_MM, convert, write_cine_sax
from medseq.components.io import deid
from medseq.pipeline import features as F


def run(config, root: Path, out: Path, uids: list[str], **preprocess):
    labels = out.parent / f"{out.name}-labels.csv"  # beside the output: the input may be the repo's samples
    labels.write_text("series_instance_uid,label\n" + "".join(f"{u},normal\n" for u in uids))
    config = dataclasses.replace(config, input=str(root), labels=str(labels),
                                 preprocess=dataclasses.replace(config.preprocess, **preprocess))
    convert(config, out)
    records = []
    for shard in sorted(out.glob("*/*.tfrecord.gz")):
        for raw in tf.data.TFRecordDataset(str(shard), compression_type="GZIP"):
            records.append(tf.train.Example.FromString(raw.numpy()).features.feature)
    rejected = [json.loads(line) for line in (out / F.REJECTED_FILE).read_text().splitlines()]
    return records, rejected, json.loads((out / F.QC_FILE).read_text())


@pytest.fixture(scope="module")
def sax(tmp_path_factory):
    root = tmp_path_factory.mktemp("sax")
    uid = write_cine_sax(root / "one", one_series=True)
    write_cine_sax(root / "per_slice", one_series=False)
    return root, uid


def _frames(feature) -> np.ndarray:
    shape = list(feature[F.FRAMES_SHAPE].int64_list.value)
    dtype = feature[F.FRAMES_DTYPE].bytes_list.value[0].decode()
    return np.frombuffer(feature[F.FRAMES].bytes_list.value[0], dtype).reshape(shape)


def test_a_multi_slice_cine_in_one_series_gives_one_record_per_position(config, sax, tmp_path):
    root, uid = sax
    four_d, rejected, qc = run(config, root / "one", tmp_path / "one", [uid], min_frames=2)
    per_slice, _, _ = run(config, root / "per_slice", tmp_path / "slices", [f"{uid}.{k + 1}" for k in range(3)],
                          min_frames=2)
    assert [r["reason"] for r in rejected if r["reason"] != "unlabeled"] == []
    assert qc["four_d"] == {"records": 3, "series": 1, "time_attributes": {"TriggerTime": 1}}
    assert qc["files"]["in_records"] == POSITIONS * len(list(CINE.iterdir()))
    by_position = {r[F.POSITION_INDEX].int64_list.value[0]: r for r in four_d}
    assert sorted(by_position) == [0, 1, 2]
    slices = {r[F.SERIES_KEY].bytes_list.value[0].decode(): r for r in per_slice}
    for k in range(POSITIONS):
        own = slices[deid.keyed_hash(KEY, "series", f"{uid}.{k + 1}")]
        record = by_position[k]
        # The right frames in the right order: what the same slice gives as a series of its own.
        assert np.array_equal(_frames(record), _frames(own)), k
        assert record[F.FRAME_AXIS].bytes_list.value[0] == b"time"
        assert record[F.VALID_FRAMES].int64_list.value == own[F.VALID_FRAMES].int64_list.value
        assert F.POSITION_INDEX not in own
    assert len({r[F.PATIENT_KEY].bytes_list.value[0] for r in four_d}) == 1  # one patient, hence one split
    assert len({r[F.SERIES_KEY].bytes_list.value[0] for r in four_d}) == POSITIONS
    assert len({r[F.LABEL].int64_list.value[0] for r in four_d}) == 1
    assert not np.array_equal(_frames(by_position[0]), _frames(by_position[1]))


def test_a_grid_with_a_hole_no_time_that_orders_and_the_reject_policy_are_rejections(config, sax, tmp_path):
    root, uid = sax
    write_cine_sax(tmp_path / "hole", one_series=True, drop=4)
    _, rejected, _ = run(config, tmp_path / "hole", tmp_path / "out-hole", [uid])
    [row] = [r for r in rejected if r["reason"] != "unlabeled"]
    assert row["reason"] == "incomplete_4d" and row["files"] == POSITIONS * 18 - 1
    assert "expected 3 slice positions x 18 times = 54 images, found 53" in row["message"]
    write_cine_sax(tmp_path / "runaway", one_series=True, runaway_trigger=True)
    _, rejected, _ = run(config, tmp_path / "runaway", tmp_path / "out-runaway", [uid])
    assert [r["reason"] for r in rejected if r["reason"] != "unlabeled"] == ["unordered_4d"]
    records, rejected, _ = run(config, root / "one", tmp_path / "out-reject", [uid], four_d="reject")
    [row] = [r for r in rejected if r["reason"] != "unlabeled"]
    assert records == [] and row["reason"] == "duplicate_position" and "preprocess.four_d is reject" in row["message"]


ENHANCED = SAMPLES / "cine_ef" / "dicom" / "PA000006" / "ST000000" / "SE000003"  # one enhanced MR cine, 20 frames


def write_enhanced_sax(path: Path, deflated: bool = False) -> str:
    """ENHANCED's 20 phases at POSITIONS slice positions in one enhanced MR object, frames
    ordered position-major as scanners often write them, each position's pixels rolled."""
    import copy

    ds = pydicom.dcmread(next(ENHANCED.iterdir()))
    pixels = ds.pixel_array
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    orientation = np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
                           if "PlaneOrientationSequence" in ds.SharedFunctionalGroupsSequence[0]
                           else groups[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    frames, items = [], []
    for k in range(POSITIONS):
        for t, group in enumerate(groups):
            item = copy.deepcopy(group)
            position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float) + k * SLICE_MM * normal
            item.PlanePositionSequence[0].ImagePositionPatient = [round(float(v), 4) for v in position]
            item.FrameContentSequence[0].InStackPositionNumber = k + 1
            item.FrameContentSequence[0].TemporalPositionIndex = t + 1
            items.append(item)
            frames.append(np.roll(pixels[t], 5 * k, axis=1))
    ds.PerFrameFunctionalGroupsSequence = items
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(frames).tobytes()
    if deflated:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SeriesInstanceUID)


def test_an_enhanced_multi_frame_4d_object_gives_one_record_per_position(config, tmp_path):
    (tmp_path / "in").mkdir()
    uid = write_enhanced_sax(tmp_path / "in" / "IM0001")
    records, rejected, qc = run(config, tmp_path / "in", tmp_path / "out", [uid], min_frames=2)
    assert [r["reason"] for r in rejected] == [] and qc["files"]["in_records"] == 1
    assert qc["four_d"]["records"] == POSITIONS and qc["four_d"]["series"] == 1
    assert list(qc["four_d"]["time_attributes"]) == ["NominalCardiacTriggerDelayTime"]
    by_position = {r[F.POSITION_INDEX].int64_list.value[0]: _frames(r) for r in records}
    assert sorted(by_position) == [0, 1, 2]
    # Position k holds the cine rolled by 5k pixels: the same frames, in the same order.
    for k in (1, 2):
        assert np.array_equal(np.roll(by_position[0], 5 * k, axis=2), by_position[k]), k


def test_a_deflated_enhanced_object_keeps_each_frames_geometry(tmp_path, monkeypatch):
    """Its per-frame groups (8 KB here, over the 4 KB the header pass defers) are read from
    the inflated data set: a deferred read would go back to the deflated file (a bug the
    4-D work found: every frame lost its position)."""
    from medseq.components.preprocessing import header_values, headers

    path = tmp_path / "IM0001"
    write_enhanced_sax(path, deflated=True)
    with open(path, "rb") as f:
        fast = headers.read_header(f, str(path))
    monkeypatch.setattr(header_values, "FAST_PATHS", False)  # every value through pydicom
    with open(path, "rb") as f:
        slow = headers.read_header(f, str(path))
    assert all(frame.position is not None for frame in fast.frames) and len(fast.frames) == POSITIONS * 20
    assert [f.position for f in fast.frames] == [f.position for f in slow.frames]
    assert [f.times for f in fast.frames] == [f.times for f in slow.frames]


def test_synthetic_cine_sax_converts_whole_with_the_default_policy(config, tmp_path):
    """`medseq synth --task cine_sax`: stacks written as one series (classic and enhanced,
    every transfer syntax) and as one series per slice all become records."""
    from medseq.components import synth

    synth.run("cine_sax", patients=8, seed=1, out=tmp_path / "sax", small=True)
    sax = tmp_path / "sax"
    cfg = dataclasses.replace(config, input=str(sax / "dicom"), labels=str(sax / "labels.csv"),
                              preprocess=dataclasses.replace(config.preprocess, min_frames=2))
    convert(cfg, tmp_path / "out")
    qc = json.loads((tmp_path / "out" / F.QC_FILE).read_text())
    assert set(qc["rejected"]) <= {"unlabeled", "not_dicom"}, qc["rejected"]  # localizers and junk only
    labeled = len((tmp_path / "sax" / "labels.csv").read_text().splitlines()) - 1
    four_d = qc["four_d"]
    # Every labeled series is in the records: a 4-D one as one record per slice position.
    assert sum(qc["records"].values()) == labeled - four_d["series"] + four_d["records"]
    assert four_d["series"] >= 2 and four_d["records"] >= 6 * four_d["series"]


def test_volumes_give_one_sequence_of_volumes_per_series_with_each_position_in_place(config, sax, tmp_path):
    """`four_d: volumes`: the multi-slice cine is one T x D x H x W x C record whose
    position k (D = the positions) holds the frames of its per-position record; resampled
    to D = 5, the outer and middle positions land on source positions and the others
    between them; a cine at one position fills D with itself."""
    root, uid = sax
    per_position, _, _ = run(config, root / "one", tmp_path / "pp", [uid], min_frames=2)
    by_position = {r[F.POSITION_INDEX].int64_list.value[0]: _frames(r) for r in per_position}
    [record], rejected, qc = run(config, root / "one", tmp_path / "vol", [uid], min_frames=2, four_d="volumes",
                                 depth=POSITIONS)
    assert [r["reason"] for r in rejected if r["reason"] != "unlabeled"] == []
    volume = _frames(record)
    t, h, w, c = by_position[0].shape
    assert volume.shape == (t, POSITIONS, h, w, c) and F.POSITION_INDEX not in record
    assert record[F.SERIES_KEY].bytes_list.value[0].decode() == deid.keyed_hash(KEY, "series", uid)
    assert qc["four_d"] == {"records": 1, "series": 1, "time_attributes": {"TriggerTime": 1}}
    assert qc["files"]["in_records"] == POSITIONS * len(list(CINE.iterdir()))
    for k in range(POSITIONS):  # one window over the series; the rolled positions share their values
        assert np.array_equal(volume[:, k], by_position[k]), k
    spacing = list(record[F.SPACING].float_list.value)
    assert len(spacing) == 4 and spacing[2] == pytest.approx(SLICE_MM, rel=1e-3)

    [five], _, _ = run(config, root / "one", tmp_path / "vol5", [uid], min_frames=2, four_d="volumes", depth=5)
    five = _frames(five)
    for d, k in ((0, 0), (2, 1), (4, 2)):
        assert np.array_equal(five[:, d], by_position[k]), d
    between = (by_position[0].astype(float) + by_position[1]) / 2
    assert np.abs(five[:, 1] - between).max() <= 1.0  # halfway, to the rounding of uint8

    slices, _, _ = run(config, root / "per_slice", tmp_path / "vol-slices", [f"{uid}.{k + 1}" for k in range(3)],
                       min_frames=2, four_d="volumes", depth=4)
    for record in slices:  # a 3-D cine: one position, the same image at every depth
        frames = _frames(record)
        assert frames.shape[1] == 4 and all(np.array_equal(frames[:, d], frames[:, 0]) for d in range(4))


def test_volumes_of_an_enhanced_4d_object_and_of_a_slice_stack(config, tmp_path):
    """The enhanced object's positions are its volume's positions; a slice stack (CT) is one
    volume (valid_frames 1, its slices along D) in the same record set."""
    (tmp_path / "in").mkdir()
    uid = write_enhanced_sax(tmp_path / "in" / "IM0001")
    [record], rejected, qc = run(config, tmp_path / "in", tmp_path / "out", [uid], min_frames=2, four_d="volumes",
                                 depth=POSITIONS)
    assert [r["reason"] for r in rejected] == [] and qc["four_d"]["series"] == 1
    volume = _frames(record)
    assert volume.shape[:2] == (16, POSITIONS)
    for k in (1, 2):
        assert np.array_equal(np.roll(volume[:, 0], 5 * k, axis=2), volume[:, k]), k

    flat = SAMPLES / "ct_nodule" / "dicom" / "flat"  # the CT series of several patients, in one folder
    ds = pydicom.dcmread(min(flat.iterdir()), stop_before_pixels=True)
    [record], rejected, _ = run(config, flat, tmp_path / "ct", [str(ds.SeriesInstanceUID)], four_d="volumes",
                                depth=6)
    assert {r["reason"] for r in rejected} <= {"unlabeled", "not_dicom"}
    volume = _frames(record)
    assert record[F.VALID_FRAMES].int64_list.value[0] == 1 and record[F.FRAME_AXIS].bytes_list.value[0] == b"space"
    assert volume.shape[:2] == (16, 6) and not volume[1:].any()  # one volume, then padding
    assert len({volume[0, d].tobytes() for d in range(6)}) == 6  # six different slabs of the stack
