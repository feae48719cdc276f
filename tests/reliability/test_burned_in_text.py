"""Text burned into the pixels (ingest.pixel_phi): what DICOM declares keeps it out of
every output. The real ultrasound clip pydicom ships (examples_ybr_color.dcm, 30 YBR
JPEG frames of 320 x 240, one region listed from (84, 31) to (595, 414): past the
image's edge, as in a file downsampled without updating it) is marked with a banner of
"text" where scanners draw the patient's name and the date, outside its region; the
records of the marked clip are those of the unmarked one, and so are the run report's
frame strips. Files declaring Burned In Annotation, and secondary captures, are kept
out by default, in ingest and in `medseq predict` alike, and qc.json counts it all."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf

from helpers import IN_PROCESS, KEY, convert
from medseq.components import predict
from medseq.components.io.examples import split_files
from medseq.components.preprocessing import reasons
from medseq.pipeline import features as F
from medseq.pipeline.config import PixelPhiConfig, SplitConfig, load_config

pytestmark = [pytest.mark.reliability]
REGION = (84, 31, 319, 239)  # the clip's one region, clipped to its 320 x 240 image (inclusive corners)


def _rgb_clip(pydicom_files: Path, marked: bool) -> pydicom.Dataset:
    """The real clip as uncompressed RGB, optionally with text-like marks outside its region."""
    ds = pydicom.dcmread(pydicom_files / "examples_ybr_color.dcm")
    frames = ds.pixel_array.copy()  # (30, 240, 320, 3), RGB
    if marked:
        x0, y0 = REGION[:2]
        for k in range(12):  # glyph-like blocks of a name and a date along the top banner
            frames[:, 6:24, 100 + 18 * k:110 + 18 * k] = (255, 255, 255) if k % 3 else (255, 240, 0)
        frames[:, 60:200:12, 8:x0 - 6] = 255  # a column of measurements on the left
        frames[:, :y0, :x0] = 200  # a logo in the corner
    ds.set_pixel_data(frames, "RGB", 8)
    return ds


def _write(ds: pydicom.Dataset, folder: Path, label: str = "a", **changes: object) -> Path:
    """`ds` (with `changes`) as the one series of `folder`/dicom, and its labels.csv."""
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    (folder / "dicom").mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "dicom" / "clip.dcm", enforce_file_format=True)
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("series_instance_uid", "label"), (ds.SeriesInstanceUID, label)])
    return folder


def _convert(folder: Path, out: Path, **phi: str) -> dict:
    """The ingest job on `folder`, every record in eval; its qc.json."""
    config = load_config().on_input(str(folder / "dicom"), str(folder / "labels.csv"))
    config = dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, min_frames=1),
                                 ingest=dataclasses.replace(config.ingest, classes=("a", "b"),
                                                            split=SplitConfig(0.0, 1.0, 0.0),
                                                            pixel_phi=PixelPhiConfig(**phi)))
    convert(config, out, key=KEY, beam_args=IN_PROCESS)
    return json.loads((out / F.QC_FILE).read_text())


def _frames(out: Path) -> list[np.ndarray]:
    found = []
    for raw in tf.data.TFRecordDataset(split_files(out, "eval"), compression_type="GZIP"):
        feature = tf.train.Example.FromString(raw.numpy()).features.feature
        shape = list(feature[F.FRAMES_SHAPE].int64_list.value)
        found.append(np.frombuffer(feature[F.FRAMES].bytes_list.value[0], np.uint8).reshape(shape))
    return found


@pytest.fixture(scope="module")
def clips(pydicom_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {name: _write(_rgb_clip(pydicom_files, name == "marked"), root / name) for name in ("plain", "marked")}


def test_marks_outside_the_ultrasound_region_never_reach_a_record(clips, tmp_path):
    qc = {name: _convert(folder, tmp_path / name) for name, folder in clips.items()}
    [plain], [marked] = _frames(tmp_path / "plain"), _frames(tmp_path / "marked")
    assert plain.shape == (16, 64, 64, 1)
    np.testing.assert_array_equal(marked, plain)
    for counts in qc.values():
        assert counts["pixel_phi"]["records"]["cropped_to_regions"] == 1
        assert counts["config"]["ingest"]["pixel_phi"]["ultrasound_regions"] == "crop"
    # Without the policy the marks do reach the record: the check above can fail.
    _convert(clips["marked"], tmp_path / "off", ultrasound_regions="off")
    [kept] = _frames(tmp_path / "off")
    assert np.abs(kept.astype(int) - plain.astype(int)).max() > 50


def test_the_crop_keeps_exactly_the_region_and_the_mask_keeps_the_image_size(clips, pydicom_files, tmp_path):
    from medseq.components.preprocessing.decode import SeriesMeta
    from medseq.components.preprocessing.transform import preprocess

    config = load_config().preprocess
    rgb = _rgb_clip(pydicom_files, marked=True).pixel_array
    x0, y0, x1, y1 = REGION
    meta = SeriesMeta("US", "RGB", True, None, None, 0.0, 255.0, F.AXIS_INDEX)
    expected = preprocess(rgb[:, y0:y1 + 1, x0:x1 + 1].astype(np.float32), meta, config).frames
    [series] = predict.prepare_folder(clips["marked"] / "dicom", config, key=KEY)
    np.testing.assert_array_equal(series.item.frames, expected)  # predict's path: the same crop
    assert series.item.pixel_phi == ("cropped_to_regions",)

    [masked] = predict.prepare_folder(clips["marked"] / "dicom", config, key=KEY,
                                      phi=PixelPhiConfig(ultrasound_regions="mask"))
    outside = np.zeros(rgb.shape, bool)
    outside[:, :y0] = outside[:, :, :x0] = True
    zeroed = np.where(outside, 0, rgb).astype(np.float32)
    np.testing.assert_array_equal(masked.item.frames, preprocess(zeroed, meta, config).frames)


def test_a_region_outside_the_image_leaves_nothing_and_is_rejected(pydicom_files, tmp_path):
    ds = _rgb_clip(pydicom_files, marked=False)
    region = ds.SequenceOfUltrasoundRegions[0]
    region.RegionLocationMinX0, region.RegionLocationMaxX1 = 400, 500  # beyond the 320 columns
    folder = _write(ds, tmp_path / "in")
    qc = _convert(folder, tmp_path / "out")
    rejected = [json.loads(line) for line in (tmp_path / "out" / F.REJECTED_FILE).read_text().splitlines()]
    assert [r["reason"] for r in rejected] == [reasons.NO_IMAGING_REGION]
    assert "leave no pixel of the 240 x 320 image" in rejected[0]["message"]
    assert qc["pixel_phi"]["rejected"][reasons.NO_IMAGING_REGION] == 1


def test_burned_in_annotation_is_rejected_unless_kept_and_predict_applies_the_model_s_policy(
        pydicom_files, tmp_path):
    ds = pydicom.dcmread(pydicom_files / "MR_small.dcm")
    folder = _write(ds, tmp_path / "in", BurnedInAnnotation="YES")
    qc = _convert(folder, tmp_path / "default")
    assert qc["rejected"] == {reasons.BURNED_IN_ANNOTATION: 1} and qc["records"]["eval"] == 0
    assert qc["pixel_phi"]["rejected"][reasons.BURNED_IN_ANNOTATION] == 1
    line = json.loads((tmp_path / "default" / F.REJECTED_FILE).read_text())
    assert "declare Burned In Annotation YES" in line["message"] and ds.PatientName.family_name not in str(line)
    kept = _convert(folder, tmp_path / "kept", burned_in_annotation="keep")
    assert kept["records"]["eval"] == 1 and kept["pixel_phi"]["records"]["burned_in_kept"] == 1

    [series] = predict.prepare_folder(folder / "dicom", load_config().preprocess, key=KEY)
    assert series.item.code == reasons.BURNED_IN_ANNOTATION


def test_ultrasound_without_regions_is_kept_whole_and_counted(pydicom_files, tmp_path):
    ds = _rgb_clip(pydicom_files, marked=False)
    del ds.SequenceOfUltrasoundRegions
    qc = _convert(_write(ds, tmp_path / "in"), tmp_path / "out")
    assert qc["records"]["eval"] == 1 and qc["pixel_phi"]["records"]["ultrasound_without_regions"] == 1
    assert qc["pixel_phi"]["records"]["cropped_to_regions"] == 0


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "JPEG2000.dcm"])  # an SC class; and ConversionType WSD
def test_secondary_captures_are_rejected_by_default(pydicom_files, tmp_path, name):
    ds = pydicom.dcmread(pydicom_files / name)
    ds.SeriesInstanceUID = ds.SeriesInstanceUID if "SeriesInstanceUID" in ds else pydicom.uid.generate_uid()
    folder = _write(ds, tmp_path / "in")
    qc = _convert(folder, tmp_path / "default")
    assert qc["rejected"] == {reasons.SECONDARY_CAPTURE: 1}
    kept = _convert(folder, tmp_path / "kept", secondary_capture="keep")
    assert kept["records"]["eval"] == 1 and kept["pixel_phi"]["records"]["secondary_capture_kept"] == 1


def test_the_run_report_s_frame_strips_show_only_the_region(clips, tmp_path):
    from medseq.pipeline import run_report

    config = load_config()
    config = dataclasses.replace(config, report=dataclasses.replace(config.report, frame_strips="on"))
    strips = {}
    for name, folder in clips.items():
        run = tmp_path / name
        _convert(folder, run / "ingest")
        strips[name] = run_report._strips(run, config)
    assert "data:image/png;base64," in strips["plain"] or "<img" in strips["plain"]
    assert strips["marked"] == strips["plain"]
