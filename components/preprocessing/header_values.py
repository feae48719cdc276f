"""The header pass's values, read straight from pydicom's raw elements where they are plain.

`Dataset.get` converts each value through pydicom's hooks, validation and value classes
(DSfloat, IS, UID, PersonName, MultiValue) and stores the element back: about 1.2 ms a
file for the ~40 values the header pass reads, more than `dcmread` itself and a third
of what reading and decoding a file costs (benchmarks/bench_ingest.py). For a value in
its plain form, `HeaderValues.get` returns what pydicom's value would compare equal to,
as plain Python (str, int, float, a list of int or float):

- text (UI, CS, DA, LO, SH, PN): printable ASCII without a backslash (one value),
  stripped as pydicom strips each VR;
- DS and IS: every value a decimal or integer string of DICOM's strict form;
- US, UL, FD: little-endian binary numbers.

Anything else (an element absent from the file or with another VR than the dictionary's,
empty, deferred, not ASCII, several text values, a number in another form, big endian)
is converted by pydicom itself, so every odd value behaves exactly as pydicom makes it
behave. tests/components/preprocessing/test_header_values.py holds the two to the same
values and the same `FileHeader`s on pydicom's own files, synthetic data and the fuzz
corpus of broken files.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import as_pixel_options
from pydicom.tag import BaseTag

from .plain_file import sequence_items

_DECIMAL = re.compile(rb" *[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)? *\Z")
_INTEGER = re.compile(rb" *[+-]?\d{1,12} *\Z")  # 12: DICOM's longest IS; pydicom keeps larger ones as floats
_NOT_PLAIN_TEXT = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")  # not printable ASCII, or a backslash


def _plain_text(raw: bytes) -> str | None:
    """CS, DA, LO, SH, PN: one ASCII value without its trailing spaces and NULs, as
    pydicom's `convert_string`, `convert_text` and `convert_PN` read it."""
    body = raw.rstrip(b"\x00 ")
    return None if _NOT_PLAIN_TEXT.search(body) else body.decode("ascii")


def _uid(raw: bytes) -> str | None:
    """UI: as text, and the `UID` class strips the leading spaces too."""
    text = _plain_text(raw)
    return text.lstrip(" ") if text is not None else None


def _numbers(pattern: re.Pattern[bytes], kind: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """DS or IS: the string without its padding, split at backslashes, each value read."""
    def convert(raw: bytes) -> Any:
        parts = raw.strip(b" ").rstrip(b"\x00 ").split(b"\\")
        if not all(pattern.match(p) for p in parts):
            return None
        values = [kind(p) for p in parts]
        return values[0] if len(values) == 1 else values
    return convert


def _binary(code: str) -> Callable[[bytes], Any]:
    """US, UL, FD: little-endian numbers of a whole number of values."""
    size = struct.calcsize(f"<{code}")

    def convert(raw: bytes) -> Any:
        if len(raw) % size:
            return None
        values = list(struct.unpack(f"<{len(raw) // size}{code}", raw))
        return values[0] if len(values) == 1 else values
    return convert


_CONVERT: dict[str, Callable[[bytes], Any]] = {
    "UI": _uid, "CS": _plain_text, "DA": _plain_text, "LO": _plain_text, "SH": _plain_text,
    "PN": _plain_text, "DS": _numbers(_DECIMAL, float), "IS": _numbers(_INTEGER, int),
    "US": _binary("H"), "UL": _binary("I"), "FD": _binary("d"), "FL": _binary("f"), "TM": _plain_text,
}
# The values the header pass reads; each has one VR in the DICOM dictionary.
KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID",
    "Modality", "PhotometricInterpretation", "PatientID", "OtherPatientIDs", "InstitutionName", "Manufacturer",
    "AccessionNumber", "StudyID", "PatientName", "ReferringPhysicianName", "PatientBirthDate", "StudyDate",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "ImagerPixelSpacing", "TriggerTime",
    "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "FrameTime", "FrameTimeVector",
    "InstanceNumber", "NumberOfFrames", "TemporalPositionIdentifier", "Rows", "Columns", "SamplesPerPixel",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "PlanarConfiguration",
    "NominalCardiacTriggerDelayTime", "TemporalPositionIndex",  # in an enhanced object's functional groups
    "AcquisitionTime", "ContentTime", "NominalPercentageOfCardiacPhase",  # what may order a 4-D series in time
    "BurnedInAnnotation", "ConversionType",  # text in the pixels (pixel_phi.py)
)
_SPECS: dict[str, tuple[BaseTag, str, Callable[[bytes], Any]]] = {}
for _keyword in KEYWORDS:
    _tag = tag_for_keyword(_keyword)
    if _tag is None:
        raise ValueError(f"{_keyword} is not a DICOM keyword")
    _SPECS[_keyword] = (BaseTag(_tag), dictionary_VR(_tag), _CONVERT[dictionary_VR(_tag)])

# The fast paths (plain values here, plain files in plain_file.py, raw functional-group
# items in enhanced.py) read pydicom's raw elements and mirror its 3.0 conversions, which
# the tests check against pydicom itself. On any other pydicom every file and value goes
# through pydicom (setup.py pins 3.0; this guards an install that overrides the pin).
FAST_PATHS = tuple(pydicom.__version__.split(".")[:2]) == ("3", "0")


def _fast_paths() -> bool:
    return FAST_PATHS  # read when used: a test turns it off


class RawElements(Protocol):
    """The elements of a data set or of a sequence item as stored (pydicom's raw elements
    until a value is read): `items()` as pydicom's public `Dataset.items()` gives them,
    and `get`/`in` by keyword. What `HeaderValues` reads; a `Dataset` is one, so is `RawItem`."""

    def items(self) -> Any: ...
    def get(self, key: str, default: Any = None) -> Any: ...
    def __contains__(self, key: Any) -> bool: ...


def stored_elements(source: RawElements) -> Mapping[BaseTag, DataElement | RawDataElement]:
    """{tag: element as stored}: the live read-only view behind `items()` (no copy, and no
    conversion of the tag on each look-up as `Dataset.get_item` does: 0.14 ms a file)."""
    items = source.items()
    mapping = getattr(items, "mapping", None)  # dict_items.mapping (Python >= 3.10)
    return cast("Mapping[BaseTag, DataElement | RawDataElement]", mapping if mapping is not None else dict(items))


class Fallback:
    """Shared by the raw items of one read: set when one of them meets a value only pydicom
    reads exactly, so that the caller reads the whole sequence through pydicom instead."""

    __slots__ = ("needed",)

    def __init__(self) -> None:
        self.needed = False


class RawItem:
    """A sequence item's raw elements, read from the file's bytes without pydicom's
    Dataset (`plain_file.sequence_items`). `get` of a sequence gives its items; of
    anything else (a value `HeaderValues` found not plain) it gives `default` and sets the
    shared `Fallback`: the caller's result is then discarded and read through pydicom."""

    __slots__ = ("elements", "fallback")

    def __init__(self, elements: dict[BaseTag, DataElement | RawDataElement], fallback: Fallback) -> None:
        self.elements, self.fallback = elements, fallback

    def items(self) -> Any:
        return self.elements.items()

    def get(self, key: str, default: Any = None) -> Any:
        tag = tag_for_keyword(key)
        elem = self.elements.get(BaseTag(tag)) if tag is not None else None
        if tag is None or elem is None:
            return default
        raw = raw_sequence(elem) if dictionary_VR(tag) == "SQ" else None
        if raw is not None:
            items = sequence_items(*raw)
            if items is not None:
                return [RawItem(item, self.fallback) for item in items]
        self.fallback.needed = True
        return default

    def __contains__(self, key: Any) -> bool:
        tag = tag_for_keyword(key) if isinstance(key, str) else key
        return tag is not None and BaseTag(tag) in self.elements

    def __len__(self) -> int:  # an empty item is falsy, as an empty Dataset is
        return len(self.elements)


def raw_sequence(elem: object) -> tuple[bytes, bool] | None:
    """(value, implicit VR) of a sequence pydicom has not converted yet, little endian,
    its value read; None for anything else."""
    if isinstance(elem, RawDataElement) and (elem.VR == "SQ" or (elem.VR is None and elem.is_implicit_VR)) \
            and elem.is_little_endian and isinstance(elem.value, bytes):
        return elem.value, elem.is_implicit_VR
    return None


class HeaderValues:
    """`get(keyword, default)` and `keyword in values`, as on a pydicom `Dataset`, with the
    plain values of `KEYWORDS` read without pydicom's conversion. The data set is left
    as it was read for those; every other keyword is the source's own `get`."""

    LEAN = True  # False: every value through pydicom (the tests compare the two)

    __slots__ = ("ds", "lean", "_stored")

    def __init__(self, ds: Dataset | RawItem) -> None:
        self.ds: Dataset | RawItem = ds
        self._stored = stored_elements(ds)
        # Opt-in pydicom settings that change what a plain value converts to (dates as
        # objects) or make a merely unusual one an error: then pydicom reads every value.
        plain = not config.datetime_conversion and config.settings.reading_validation_mode != config.RAISE
        self.lean = isinstance(ds, RawItem) or (self.LEAN and _fast_paths() and plain)

    def get(self, keyword: str, default: Any = None) -> Any:
        spec = _SPECS.get(keyword)
        if spec is not None and self.lean:
            tag, vr, convert = spec
            elem = self._stored.get(tag)
            if elem is None:
                return default
            if type(elem) is RawDataElement and elem.value and elem.is_little_endian and (
                    elem.VR == vr or (elem.VR is None and elem.is_implicit_VR)):
                value = convert(elem.value)
                if value is not None:
                    return value
        return self.ds.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        spec = _SPECS.get(keyword)
        return spec[0] in self._stored if spec is not None else keyword in self.ds


# pydicom's Image Pixel attributes, by the names its decoders take (pixels/utils.py).
_IMAGE_PIXEL = (("SamplesPerPixel", "samples_per_pixel"), ("PhotometricInterpretation", "photometric_interpretation"),
                ("PlanarConfiguration", "planar_configuration"), ("NumberOfFrames", "number_of_frames"),
                ("Rows", "rows"), ("Columns", "columns"), ("BitsAllocated", "bits_allocated"),
                ("BitsStored", "bits_stored"), ("PixelRepresentation", "pixel_representation"))


def pixel_options(values: HeaderValues) -> dict[str, Any]:
    """pydicom's `as_pixel_options(ds, pixel_keyword="PixelData")`, from the plain values.
    A frame count pydicom would warn about and correct, or an Extended Offset Table,
    goes to pydicom's own function."""
    frames = values.get("NumberOfFrames", 1)
    if (not isinstance(frames, int) or frames < 1 or "ExtendedOffsetTable" in values) and \
            isinstance(values.ds, Dataset):  # the Image Pixel module is a data set's, never an item's
        return as_pixel_options(values.ds, pixel_keyword="PixelData")
    options = {name: values.get(keyword) for keyword, name in _IMAGE_PIXEL if keyword in values}
    options["number_of_frames"] = frames
    options["pixel_keyword"] = "PixelData"
    return options
