"""Header pass and pixel pass on pydicom's own real test files."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from medseq.components.preprocessing import reasons
from medseq.components.preprocessing.decode import load_series
from medseq.components.preprocessing.geometry import order_series
from medseq.components.preprocessing.headers import read_header
from medseq.components.preprocessing.reasons import Rejected

LOSSLESS_MR_SMALL = ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                     "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                     "MR_small_padded.dcm")


def header(path):
    with open(path, "rb") as f:
        return read_header(f, str(path))


def decode(paths):
    headers = [header(p) for p in paths]
    ordered = order_series(headers)
    return load_series(ordered, {h.path: h for h in headers}, lambda p: open(p, "rb"))


def reason_of(path) -> str:
    with pytest.raises(Rejected) as exc:
        header(path)
    return exc.value.code


@pytest.mark.parametrize("name", LOSSLESS_MR_SMALL)
def test_mr_small_decodes_to_the_same_pixels_in_every_lossless_syntax(pydicom_files, name):
    reference, _ = decode([pydicom_files / "MR_small.dcm"])
    volume, meta = decode([pydicom_files / name])
    np.testing.assert_array_equal(volume, reference)
    assert meta.modality == "MR" and volume.shape == (1, 64, 64)


@pytest.mark.parametrize("name", ("JPEG-lossy.dcm", "JPGExtended.dcm"))
def test_12_bit_jpeg_extended_needs_a_gpl_plugin_and_is_reported_so(pydicom_files, name):
    with pytest.raises(Rejected) as exc:
        decode([pydicom_files / name])
    assert exc.value.code == reasons.UNSUPPORTED_TRANSFER_SYNTAX and "12-bit" in exc.value.message


@pytest.mark.parametrize("name", ("JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_small_odd_jpeg.dcm",
                                  "SC_rgb_jpeg_gdcm.dcm",
                                  "JPEGLSNearLossless_16.dcm", "SC_rgb_rle.dcm", "image_dfl.dcm"))
def test_lossy_and_colour_syntaxes_decode(pydicom_files, name):
    ds = pydicom.dcmread(pydicom_files / name)
    with open(pydicom_files / name, "rb") as f:
        try:
            h = read_header(f, name)
        except Rejected as exc:  # some of these files carry no SeriesInstanceUID
            assert exc.code == reasons.MISSING_ATTRIBUTE
            return
    volume, _ = decode([pydicom_files / name])
    assert volume.shape[1:3] == (ds.Rows, ds.Columns)
    assert np.isfinite(volume).all() and volume.std() > 0
    assert h.samples_per_pixel == ds.SamplesPerPixel


def test_ct_modality_lut_gives_hounsfield_units(pydicom_files):
    ds = pydicom.dcmread(pydicom_files / "CT_small.dcm")
    volume, meta = decode([pydicom_files / "CT_small.dcm"])
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(volume[0], expected)
    assert meta.window is not None or "WindowCenter" not in ds


def test_truncated_pixels_are_a_decode_error(pydicom_files):
    with pytest.raises(Rejected) as exc:
        decode([pydicom_files / "MR_truncated.dcm"])
    assert exc.value.code == reasons.DECODE_ERROR


@pytest.mark.parametrize("name,code", [
    ("no_meta.dcm", reasons.MISSING_FILE_META),
    ("ExplVR_LitEndNoMeta.dcm", reasons.MISSING_FILE_META),
    ("ExplVR_BigEndNoMeta.dcm", reasons.MISSING_FILE_META),
    ("meta_missing_tsyntax.dcm", reasons.MISSING_FILE_META),
    ("README.txt", reasons.NOT_DICOM),
    ("zipMR.gz", reasons.NOT_DICOM),
    ("rtplan.dcm", reasons.NO_PIXEL_DATA),
    ("test-SR.dcm", reasons.NO_PIXEL_DATA),
])
def test_invalid_files_get_the_right_reason(pydicom_files, name, code):
    assert reason_of(pydicom_files / name) == code


def test_garbage_after_the_preamble_is_unreadable(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + bytes(range(256)) * 4)
    assert reason_of(path) == reasons.UNREADABLE


@pytest.mark.parametrize("cut", [200, 700, 1500])
def test_a_file_cut_inside_its_header_is_rejected_not_crashing(pydicom_files, tmp_path, cut):
    path = tmp_path / "cut.dcm"
    path.write_bytes((pydicom_files / "CT_small.dcm").read_bytes()[:cut])
    try:
        h = read_header(open(path, "rb"), str(path))
    except Rejected as exc:
        assert exc.code in (reasons.UNREADABLE, reasons.TRUNCATED, reasons.MISSING_ATTRIBUTE, reasons.NO_PIXEL_DATA)
    else:  # the header survived the cut: then the pixels cannot
        with pytest.raises(Rejected) as exc:
            load_series(order_series([h]), {h.path: h}, lambda p: open(p, "rb"))
        assert exc.value.code in (reasons.DECODE_ERROR, reasons.UNREADABLE, reasons.TRUNCATED)


def test_empty_and_tiny_files_are_not_dicom(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "tiny").write_bytes(b"DICM")
    assert reason_of(tmp_path / "empty") == reasons.NOT_DICOM
    assert reason_of(tmp_path / "tiny") == reasons.NOT_DICOM


def test_header_pass_does_not_read_the_pixels(pydicom_files):
    raw = (pydicom_files / "CT_small.dcm").read_bytes()

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n=-1):  # type: ignore[override]
            data = super().read(n)
            Counting.read_bytes += len(data)
            return data

    h = read_header(Counting(raw), "CT_small.dcm")
    assert h.rows == 128 and Counting.read_bytes < len(raw) - 128 * 128


def test_palette_colour_goes_through_its_lookup_table(pydicom_files):
    from medseq.components.preprocessing.transform import preprocess
    from medseq.pipeline.config import PreprocessConfig

    volume, meta = decode([pydicom_files / "examples_palette.dcm"])
    assert meta.rgb and volume.shape[-1] == 3 and volume.max() <= meta.max_value
    out = preprocess(volume, meta, PreprocessConfig(frames=2, height=16, width=16, color="rgb"))
    assert out.frames.shape == (2, 16, 16, 3) and out.frames.max() > 0


def test_ultrasound_style_colour_multiframe_orders_by_stored_frames(pydicom_files):
    volume, meta = decode([pydicom_files / "SC_rgb_rle_2frame.dcm"])
    ds = pydicom.dcmread(pydicom_files / "SC_rgb_rle_2frame.dcm")
    np.testing.assert_array_equal(volume, ds.pixel_array.astype(np.float32))
    assert meta.rgb and volume.shape == (2, ds.Rows, ds.Columns, 3)


def test_header_repr_shows_no_identifier(pydicom_files):
    ds = pydicom.dcmread(pydicom_files / "CT_small.dcm", stop_before_pixels=True)
    text = repr(header(pydicom_files / "CT_small.dcm"))
    for value in (ds.PatientID, str(ds.PatientName), ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert str(value) not in text


def test_frame_time_vector_orders_an_ultrasound_style_clip(tmp_path, pydicom_files):
    ds = pydicom.dcmread(pydicom_files / "SC_rgb_rle_2frame.dcm")
    ds.FrameTimeVector = [0, 33.3]
    ds.save_as(tmp_path / "clip.dcm")
    h = header(tmp_path / "clip.dcm")
    assert [f.temporal for f in h.frames] == pytest.approx([0.0, 33.3])
    ordered = order_series([h])
    assert ordered.kind == "stack" and ordered.interval == pytest.approx(33.3)
