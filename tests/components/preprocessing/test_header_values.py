"""The header pass reads plain values without pydicom's conversion (header_values.py)
and plain files without dcmread (plain_file.py). Every value it reads so must equal
pydicom's, odd values included, and every file must give the same FileHeader (or the
same rejection) either way: on pydicom's real test files, the samples, synthetic
studies in every transfer syntax and the fuzz corpus (`corpus_files`, conftest.py)."""

from __future__ import annotations

import dataclasses
import io
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue

from medseq.components.preprocessing import enhanced, headers
from medseq.components.preprocessing.header_values import KEYWORDS, HeaderValues, pixel_options
from medseq.components.preprocessing.headers import DEFER_BYTES, FileHeader, read_header
from medseq.components.preprocessing.reasons import Rejected

ODD_TEXT = [b"1.2.3", b"1.2.3\x00", b"ABC ", b" ABC", b"A\\B", b"A\\B ", b"", b" ", b"\x00", b"ab\x00c",
            b"caf\xe9", b"\xc3\xa9t\xc3\xa9", b"\x1b$B", b"Doe^John", b"Doe^John=Ideo=Phon", b"a\tb", b"a\nb",
            b"19700101", b"~!@#$%^&*()_+{}|:<>?"]
ODD_NUMBERS = [b"1", b"1.5", b" 1.5 ", b"1.5\x00", b"-2", b"+3", b"1e3", b"1E-3", b".5", b"5.", b"1.0\\2.0",
               b"1\\2\\3", b"1\\\\2", b"\\1", b"1\\", b"nan", b"inf", b"-inf", b"1_0", b"0x10", b"1,5", b"",
               b"  ", b"\x00", b"1 2", b"abc", b"5.0", b"007", b"1" * 40, b"1e999", b"\t1", b"1\t", b"\xb51"]
ODD_BINARY = [bytes(range(1, n + 1)) for n in (0, 1, 2, 3, 4, 6, 8, 12, 16, 17)] + [
    b"\xff" * 8, struct.pack("<d", float("nan")), struct.pack("<d", -0.0), struct.pack("<dd", 1.5, -2.25)]


def _plain(value: object) -> object:
    """A pydicom value as the plain Python value it stands for."""
    if isinstance(value, (MultiValue, list)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value) if isinstance(value, str) or type(value).__name__ == "PersonName" else value


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", len(value)) + value
    if vr in ("UN", "OB", "OW", "SQ", "UT"):  # explicit VRs with a 32-bit length
        return head + vr.encode() + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + vr.encode() + struct.pack("<H", len(value)) + value


def _outcome(get, keyword: str) -> tuple[str, object]:
    try:
        return "value", repr(_plain(get(keyword)))  # repr: NaN equals NaN
    except Exception as exc:  # noqa: BLE001 - pydicom's own exception must be the lean path's too
        return "raises", type(exc).__name__


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("keyword", KEYWORDS)
def test_every_value_equals_pydicoms_odd_ones_included(keyword, implicit):
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    raws = ODD_BINARY if vr in ("US", "UL", "FD") else ODD_NUMBERS if vr in ("DS", "IS") else ODD_TEXT + ODD_NUMBERS
    for raw in raws:
        data = _element(tag, vr, raw, implicit)
        lean = read_dataset(io.BytesIO(data), implicit, True)
        reference = read_dataset(io.BytesIO(data), implicit, True)
        assert _outcome(HeaderValues(lean).get, keyword) == _outcome(reference.get, keyword), raw
        assert (keyword in HeaderValues(lean)) == (keyword in reference)
        assert HeaderValues(lean).get("Modality", "OT") == reference.get("Modality", "OT")  # absent: the default


def test_a_value_of_another_vr_than_the_dictionarys_goes_to_pydicom():
    tag = tag_for_keyword("Rows")
    data = _element(tag, "UN", b"\x01\x00", implicit=False)
    ds = read_dataset(io.BytesIO(data), False, True)
    assert HeaderValues(ds).get("Rows") == read_dataset(io.BytesIO(data), False, True).get("Rows") == 1


def _headers(paths: list[Path]) -> list[object]:
    out: list[object] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                out.append(read_header(f, str(path)))
        except Rejected as exc:
            out.append((exc.code, exc.message, exc.identifiers))
    return out


def _without_deflated_ref(header: object) -> object:
    """dcmread does not tell where a deflated stream starts: only the plain path gives a
    deflated file a PixelRef (test_pixel_ref holds its frames to the whole-file path's)."""
    if isinstance(header, FileHeader) and header.pixels is not None and header.pixels.inflate_from is not None:
        return dataclasses.replace(header, pixels=None)
    return header


def test_every_file_gives_the_header_pydicom_alone_gives(corpus_files, monkeypatch):
    lean = _headers(corpus_files)
    monkeypatch.setattr(HeaderValues, "LEAN", False)
    monkeypatch.setattr(headers, "plain_dataset", lambda fileobj, defer_size, max_inflated: None)
    assert [_without_deflated_ref(h) for h in lean] == _headers(corpus_files)
    read = sum(1 for h in lean if not isinstance(h, tuple))
    assert read > 300 and len(lean) - read > 100  # real headers and real rejections both compared


def test_pixel_options_are_pydicoms(pydicom_files):
    compared = 0
    for path in sorted(p for p in pydicom_files.rglob("*") if p.is_file() and p.stat().st_size < 20 << 20):
        try:
            ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
            if "PixelData" not in ds:
                continue
            expected = pydicom.pixels.utils.as_pixel_options(pydicom.dcmread(path), pixel_keyword="PixelData")
        except Exception:  # noqa: BLE001 - files pydicom cannot read are not compared
            continue
        assert _plain_dict(pixel_options(HeaderValues(ds))) == _plain_dict(expected), path.name
        compared += 1
    assert compared > 50


def _plain_dict(options: dict[str, object]) -> dict[str, object]:
    return {k: _plain(v) for k, v in options.items()}


def test_dataclass_fields_stay_plain(pydicom_files):
    """The values that reach a FileHeader are plain Python, whichever path read them."""
    with open(pydicom_files / "CT_small.dcm", "rb") as f:
        header = read_header(f, "CT_small.dcm")
    for field in dataclasses.fields(header):
        value = getattr(header, field.name)
        assert type(value).__module__ == "builtins" or dataclasses.is_dataclass(value), field.name


def test_enhanced_functional_groups_read_plainly_give_pydicoms_values(corpus_files, tmp_path, monkeypatch):
    """The per-frame functional groups read from their raw items (explicit and implicit VR,
    in files and re-encoded) give the FileHeader pydicom's own sequences give."""
    paths = []
    for i, path in enumerate(corpus_files):
        try:
            ds = pydicom.dcmread(path)
            if "PerFrameFunctionalGroupsSequence" not in ds or not ds.original_encoding[1]:
                continue  # (big endian files cannot be re-encoded as little endian by save_as)
            pixels = ds.pixel_array.tobytes()
        except Exception:  # noqa: BLE001 - broken or undecodable files have other tests
            continue
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
        for implicit in (False, True):
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
                pydicom.uid.ExplicitVRLittleEndian
            target = tmp_path / f"{i}-{int(implicit)}.dcm"
            try:
                ds.save_as(target, enforce_file_format=True)
            except Exception:  # noqa: BLE001 - the fuzz corpus's garbled values do not re-encode
                continue
            paths.append(target)
    plain = []
    real = enhanced._plain_per_frame
    monkeypatch.setattr(enhanced, "_plain_per_frame",
                        lambda ds, fallback: plain.append(real(ds, fallback) is not None) or real(ds, fallback))
    fast = _headers(paths)
    assert sum(plain) >= 4 and len(paths) >= 4, (sum(plain), len(paths))
    monkeypatch.setattr(HeaderValues, "LEAN", False)
    assert fast == _headers(paths)
