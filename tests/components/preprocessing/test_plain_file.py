"""plain_file.py reads a plain file's elements without dcmread: on every file it accepts
they must be exactly the elements, file meta and encoding dcmread gives, and the files
it declines must include the odd ones (big endian, no preamble, broken). A deflated data
set is read from its inflated stream, as dcmread reads it."""

from __future__ import annotations

import dataclasses
import io

import pydicom
import pytest

from medseq.components.preprocessing.headers import DEFER_BYTES
from medseq.components.preprocessing.plain_file import plain_dataset


def _meta_values(meta) -> dict[int, object]:
    return {int(tag): meta[tag].value for tag in meta.keys()}


def test_a_plain_file_reads_as_dcmread_reads_it(corpus_files):
    plain = declined = deflated = 0
    for path in corpus_files:
        data = path.read_bytes()
        plain_ds = plain_dataset(io.BytesIO(data), DEFER_BYTES)
        if plain_ds is None:
            declined += 1
            continue
        ds, deflated_at = plain_ds
        plain += 1
        deflated += deflated_at is not None
        reference = pydicom.dcmread(io.BytesIO(data), defer_size=DEFER_BYTES)
        assert dict(ds._dict) == dict(reference._dict), path.name  # RawDataElements: tag, VR, length, value, tell
        assert _meta_values(ds.file_meta) == _meta_values(reference.file_meta), path.name
        assert ds.original_encoding == reference.original_encoding, path.name
        assert ds.original_character_set == reference.original_character_set, path.name
    assert plain > 300 and declined > 100 and deflated >= 3


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "no_meta.dcm"])
def test_odd_files_go_to_dcmread(name):
    try:
        path = pydicom.data.get_testdata_file(name)
    except Exception:  # noqa: BLE001 - a file this pydicom does not ship
        pytest.skip(f"{name} is not among this pydicom's test files")
    if path is None:
        pytest.skip(f"{name} is not among this pydicom's test files")
    with open(path, "rb") as f:
        assert plain_dataset(f, DEFER_BYTES) is None


def test_a_file_cut_short_goes_to_dcmread(pydicom_files):
    data = (pydicom_files / "CT_small.dcm").read_bytes()
    assert plain_dataset(io.BytesIO(data), DEFER_BYTES) is not None
    for cut in (len(data) - 1, len(data) // 2, 200, 139):
        assert plain_dataset(io.BytesIO(data[:cut]), DEFER_BYTES) is None, cut


def test_a_deflated_file_cut_short_or_corrupt_goes_to_dcmread(pydicom_files):
    data = (pydicom_files / "image_dfl.dcm").read_bytes()
    plain = plain_dataset(io.BytesIO(data), DEFER_BYTES)
    assert plain is not None and plain[1] is not None
    start = plain[1]
    for broken in (data[:len(data) - 40], data[:start + 10], data[:start] + b"\xff" * 64):
        assert plain_dataset(io.BytesIO(broken), DEFER_BYTES) is None


def test_on_an_untested_pydicom_every_file_goes_through_dcmread(monkeypatch, corpus_files):
    """The fast paths are gated on the pydicom series the tests cover; off, the header
    pass reads every file with dcmread and gives the same headers."""
    from medseq.components.preprocessing import header_values, headers, plain_file

    files = corpus_files[:: max(1, len(corpus_files) // 80)]

    def read_all() -> list:
        out = []
        for path in files:
            with open(path, "rb") as f:
                try:
                    # where the pixels start is the fast path's own finding (a deflated file's
                    # needs its inflated stream): the pixel pass parses the file whole without it
                    out.append(dataclasses.replace(headers.read_header(f, str(path)), pixels=None))
                except Exception as exc:  # noqa: BLE001 - a rejection is a result here
                    out.append((type(exc).__name__, getattr(exc, "code", None)))
        return out

    fast = read_all()
    monkeypatch.setattr(header_values, "FAST_PATHS", False)
    monkeypatch.setattr(headers, "plain_dataset", lambda *a, **k: pytest.fail("the plain-file path ran"))
    monkeypatch.setattr(plain_file, "plain_dataset", lambda *a, **k: pytest.fail("the plain-file path ran"))
    assert not header_values.HeaderValues(pydicom.Dataset()).lean
    assert read_all() == fast
