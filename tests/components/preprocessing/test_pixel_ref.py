"""The pixel pass decodes from where the header pass saw Pixel Data begin (no second
parse of the file). On every image of pydicom's real test files (every transfer syntax
it ships, multi-frame, enhanced, colour, big endian, odd bit depths) that gives exactly
the values the whole-file path gives, or it is not used."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseq.components.preprocessing import decode
from medseq.components.preprocessing.headers import FileHeader, read_header
from medseq.components.preprocessing.reasons import Rejected


def _images(root: Path) -> list[tuple[Path, FileHeader]]:
    return _images_of(sorted(root.rglob("*")))


def _images_of(paths: list[Path]) -> list[tuple[Path, FileHeader]]:
    found = []
    for path in paths:
        if path.is_file() and path.suffix.lower() in (".dcm", "") and path.stat().st_size < 20 << 20:
            try:
                with open(path, "rb") as f:
                    found.append((path, read_header(f, str(path))))
            except Rejected:
                continue
            except Exception:  # noqa: BLE001 - not our files to judge
                continue
    return found


@pytest.fixture(scope="module")
def images(pydicom_files):
    return _images(pydicom_files)


def _whole_file(path: Path, header) -> np.ndarray:
    return decode._decode_file(str(path), dataclasses.replace(header, pixels=None), lambda p: open(p, "rb"))[0]


def test_decoding_from_the_pixel_ref_equals_the_whole_file_path(images):
    compared, syntaxes = 0, set()
    for path, header in images:
        if header.pixels is None:
            continue
        try:
            slow = _whole_file(path, header)
        except Rejected:
            continue  # the fallback path names the problem; nothing to compare
        with open(path, "rb") as f:
            fast = decode._frames_from_ref(f, header)
        assert fast.dtype == slow.dtype and fast.shape == slow.shape, path.name
        assert np.array_equal(fast, slow, equal_nan=True), path.name
        compared += 1
        syntaxes.add(header.transfer_syntax)
    assert compared >= 60 and len(syntaxes) >= 8, (compared, sorted(syntaxes))


def test_files_the_pixel_ref_cannot_describe_take_the_whole_file_path(images, pydicom_files):
    by_name = {path.name: header for path, header in images}
    assert by_name["image_dfl.dcm"].pixels.inflate_from is not None  # deflated: offsets in the inflated stream
    assert by_name["examples_palette.dcm"].pixels is None  # a palette: its tables are read from the data set
    assert by_name["CT_small.dcm"].pixels is not None
    # A PixelRef that no longer fits the file (shorter now) falls back, same frames.
    path = pydicom_files / "CT_small.dcm"
    header = by_name["CT_small.dcm"]
    broken = dataclasses.replace(header, pixels=dataclasses.replace(header.pixels, length=header.pixels.length * 9))
    frames, ds = decode._decode_file(str(path), broken, lambda p: open(p, "rb"))
    assert ds is not None and np.array_equal(frames, _whole_file(path, header))


@pytest.mark.parametrize("syntax", sorted(decode._PREFERRED_PLUGIN))
def test_a_preferred_decoder_gives_the_values_of_pydicoms_own_order(pydicom_files, syntax):
    """The decoder chosen for its CPU time decodes every file pydicom ships in that syntax
    to the very values of pydicom's default order (GDCM or pydicom's own first)."""
    plugin = decode._plugin(syntax)
    assert plugin, f"{decode._PREFERRED_PLUGIN[syntax]} is not installed"
    checked = 0
    for path in sorted(pydicom_files.rglob("*")):
        if not path.is_file() or path.stat().st_size > 20 << 20:
            continue
        try:
            ds = pydicom.dcmread(path)
            if str(ds.file_meta.get("TransferSyntaxUID", "")) != syntax or "PixelData" not in ds:
                continue
            theirs = ds.pixel_array
        except Exception:  # noqa: BLE001 - files pydicom itself cannot decode prove nothing here
            continue
        ours = pydicom.dcmread(path)
        ours.pixel_array_options(decoding_plugin=plugin)
        assert ours.pixel_array.dtype == theirs.dtype and np.array_equal(ours.pixel_array, theirs), path.name
        checked += 1
    assert checked >= (5 if syntax == pydicom.uid.RLELossless else 1), checked


def test_headers_cross_the_runner_as_compact_bytes_and_come_back_equal(images):
    for _, header in images:
        data = header.to_bytes()
        assert FileHeader.from_bytes(data) == header
        assert len(data) < 4096 or len(header.frames) > 8, (header.path, len(data))


def test_deflated_files_decode_from_their_inflated_stream_as_the_whole_file_path(corpus_files):
    """Synthetic deflated series (single and multi-frame) and pydicom's: the frames of the
    PixelRef into the inflated stream are the whole-file path's."""
    compared = 0
    for path, header in _images_of(corpus_files):
        if header.pixels is None or header.pixels.inflate_from is None:
            continue
        with open(path, "rb") as f:
            fast = decode._frames_from_ref(f, header)
        slow = _whole_file(path, header)
        assert fast.dtype == slow.dtype and np.array_equal(fast, slow), path.name
        compared += 1
    assert compared >= 5, compared
