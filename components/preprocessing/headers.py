"""Header pass: what a file says about its series, read without the pixels.

`read_header` turns one file into a `FileHeader` of plain values (classic single-frame
or enhanced multi-frame alike: one `FrameRef` per frame), or raises `Rejected`.
Identifiers stay in memory here; they are hashed before anything is written. A plain
file is read by `plain_file.plain_dataset` and plain values by `header_values`, the
rest by pydicom: the same header either way, at a fraction of the CPU.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import IO, Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from . import header_values, limits, reasons
from .enhanced import first_item, frame_rescales, frames_geometry, with_per_frame
from .header_values import HeaderValues, pixel_options
from .inflate import check_deflated_file
from .limits import DEFAULT_LIMITS, InputLimits
from .plain_file import PER_FRAME_GROUPS, plain_dataset
from .quiet import quiet_pydicom
from .reasons import Rejected

DEFER_BYTES = 4096
UNDEFINED_LENGTH = 0xFFFFFFFF
# A file without the 'DICM' marker is parsed this far at most to tell a data set missing
# its file meta from a stranger: a 100 MB file of zeros parses as 12 million empty
# elements (43 s) if read whole.
PROBE_BYTES = 64 * 1024
# The first tag of a data set written without preamble or file meta: group 0008 (or
# 0002, 0000) in either byte order. Anything else is no DICOM, without a parse.
_DATASET_STARTS = (b"\x08\x00", b"\x00\x08", b"\x02\x00", b"\x00\x02", b"\x00\x00")
# An explicit-VR element of group 0008 (identifying information) near the start of a
# file without preamble: a data set missing its file meta, not a stranger.
_GROUP_8_ELEMENT = re.compile(rb"\x08\x00..(?:CS|UI|DA|TM|LO|SH|PN|IS|DS|US|UL|AE|AS)", re.DOTALL)


@dataclass(frozen=True)
class FrameRef:
    """One frame of a file, with what orders it."""

    path: str
    frame: int  # index inside the file (0 for single-frame files)
    sop_uid: str = field(repr=False)
    instance_number: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    temporal: float | None  # trigger delay or frame time offset, ms
    # Every attribute that may order the frames of a 4-D series in time, as (keyword,
    # value) (geometry.py picks the one that orders; times of day in seconds).
    times: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class PixelRef:
    """Where a file's Pixel Data lies and what decoding it needs, so the pixel pass reads
    those bytes alone instead of parsing the file a second time."""

    offset: int  # of the value, in the file
    length: int
    options: tuple[tuple[str, Any], ...]  # pydicom.pixels `as_pixel_options`
    # Stored values -> modality units: (slope, intercept) per frame of an enhanced object,
    # one pair for a classic rescale, () for none.
    rescale: tuple[tuple[float, float], ...]
    per_frame: bool
    window: tuple[float, float] | None
    max_value: float
    # A deflated file: where its deflated data set starts; `offset` is then a position in
    # the inflated stream.
    inflate_from: int | None = None


@dataclass(frozen=True)
class FileHeader:
    path: str
    # Identifiers stay out of repr(): a header never reaches a log line by accident.
    series_uid: str = field(repr=False)
    sop_uid: str = field(repr=False)
    patient_id: str = field(repr=False)
    institution: str = field(repr=False)
    modality: str
    manufacturer: str
    frame_of_reference: str = field(repr=False)
    rows: int
    columns: int
    samples_per_pixel: int
    photometric: str
    transfer_syntax: str
    pixel_spacing: tuple[float, float] | None
    multiframe: bool
    frames: tuple[FrameRef, ...]
    identifiers: tuple[str, ...] = field(default=(), repr=False)  # only to scrub reported paths
    pixels: PixelRef | None = field(default=None, repr=False)  # None: the pixel pass reads the whole file
    # What the file says of text in its pixels (pixel_phi.py): Burned In Annotation, the
    # SOP class and Conversion Type (secondary captures), and the ultrasound regions as
    # (min x, min y, max x, max y) boxes, inclusive; None where it lists no regions.
    burned_in: str = ""
    sop_class: str = ""
    conversion_type: str = ""
    regions: tuple[tuple[int, int, int, int], ...] | None = None
    # What labels.csv may key a series by besides its UID (labels per study, from the RIS).
    study_uid: str = field(default="", repr=False)
    accession: str = field(default="", repr=False)

    def label_key(self, column: str) -> str:
        """This file's value of a labels.csv key column (LABEL_KEYS)."""
        return {"series_instance_uid": self.series_uid, "study_instance_uid": self.study_uid,
                "accession_number": self.accession}[column]

    @property
    def series_key_source(self) -> str:
        """A multi-frame file is a series by itself, even beside others of its series."""
        return f"{self.series_uid}/{self.sop_uid}" if self.multiframe else self.series_uid

    def to_bytes(self) -> bytes:
        """A compact encoding (JSON of plain values; nothing in it executes when read).
        Runners hold grouped elements as Python objects (Beam's FnApiRunner does, in its
        main process): bytes cost their length there, a FileHeader several times that."""
        values = [getattr(self, name) for name in _FIELDS]  # not astuple(): it deep-copies every value
        return json.dumps(values, separators=(",", ":"), default=_field_values).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> FileHeader:
        values = [_tuples(v) for v in json.loads(data)]
        frames, pixels = _FIELDS.index("frames"), _FIELDS.index("pixels")
        values[frames] = tuple(FrameRef(*frame) for frame in values[frames])
        values[pixels] = PixelRef(*values[pixels]) if values[pixels] is not None else None
        return cls(*values)


_FIELDS = tuple(f.name for f in dataclasses.fields(FileHeader))


def _field_values(value: Any) -> list[Any]:
    """A FrameRef or PixelRef as the list of its fields, for JSON."""
    if not dataclasses.is_dataclass(value):
        raise TypeError(f"{type(value).__name__} is not a header value")
    return [getattr(value, f.name) for f in dataclasses.fields(value)]


def _tuples(value: Any) -> Any:
    """JSON's lists back into the tuples a FileHeader holds."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == n else None


def _frame_time_offsets(ds: HeaderValues, n_frames: int) -> list[float | None]:
    """ms of each frame from the first of a cine/ultrasound clip: FrameTimeVector (its
    increments, summed once), else FrameTime; None where the file gives neither."""
    vector = [float(v) for v in (ds.get("FrameTimeVector") or [])]
    frame_time = ds.get("FrameTime")
    step = float(frame_time) if frame_time not in (None, "") else None
    offsets: list[float | None] = []
    elapsed = 0.0
    for index in range(n_frames):
        if index < len(vector):
            elapsed += vector[index] if index else 0.0
            offsets.append(elapsed)
        else:
            offsets.append(step * index if step is not None else None)
    return offsets


def pixel_spacing(ds: Dataset | HeaderValues) -> tuple[float, float] | None:
    measures = first_item(ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence")
    for source in (ds, measures):
        if source is not None:
            for name in ("PixelSpacing", "ImagerPixelSpacing"):
                spacing = _floats(source.get(name), 2)
                if spacing:
                    return (spacing[0], spacing[1])
    return None


TIMES_OF_DAY = ("AcquisitionTime", "ContentTime")  # TM values
CLASSIC_TIMES = ("TriggerTime", "NominalPercentageOfCardiacPhase", "TemporalPositionIdentifier",
                 "AcquisitionTime", "ContentTime")


def time_of_day(value: Any) -> float | None:
    """A DICOM TM (HHMMSS.FFFFFF, or its shorter forms) as seconds after midnight."""
    text = str(value).strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", text)
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + float(fraction or 0)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def candidate_times(values: HeaderValues, keywords: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """(keyword, value) of each of `keywords` the source holds as one number (a TM as seconds)."""
    found = []
    for keyword in keywords:
        value = values.get(keyword)
        if value in (None, "") or isinstance(value, (list, MultiValue)):
            continue
        number = time_of_day(value) if keyword in TIMES_OF_DAY else _number(value)
        if number is not None:
            found.append((keyword, number))
    return tuple(found)


def _classic_temporal(ds: HeaderValues) -> Any:
    """Trigger time (cine MR), else the temporal position of a dynamic series."""
    for keyword in ("TriggerTime", "TemporalPositionIdentifier"):
        if ds.get(keyword) not in (None, ""):
            return ds.get(keyword)
    return None


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _image_sop_class(ds: Dataset) -> bool:
    """The SOP class (data set or file meta) is one of images, which must hold pixels."""
    meta = getattr(ds, "file_meta", None)
    try:
        uid = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
        name = pydicom.uid.UID(str(uid)).name if uid else ""
    except Exception:  # noqa: BLE001 - a garbled UID says nothing either way
        return False
    return "Image Storage" in name or name.endswith(("Dose Storage", "Multi-frame Image Storage"))


def header_window(ds: Dataset | HeaderValues) -> tuple[float, float] | None:
    """The series' own VOI window (center, width): the first one listed."""
    source = ds if "WindowCenter" in ds else first_item(ds, "SharedFunctionalGroupsSequence", "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    center, width = source.get("WindowCenter"), source.get("WindowWidth")
    # Several windows may be listed; the first is the one the modality suggests.
    center = center[0] if isinstance(center, (list, MultiValue)) else center
    width = width[0] if isinstance(width, (list, MultiValue)) else width
    try:
        return float(center), float(width)
    except (TypeError, ValueError):
        return None


def max_value(ds: Dataset | HeaderValues, photometric: str) -> float:
    """Full scale of the stored (or, for palettes, looked-up) values."""
    if photometric == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        bits = int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 16
        return float(2 ** (16 if bits > 8 else 8) - 1)
    return float(2 ** int(ds.get("BitsStored", 8)) - 1)


def pixel_ref(ds: Dataset, header: FileHeader, deflated_at: int | None = None) -> PixelRef | None:
    """What the pixel pass needs of this file, or None where only the whole data set will
    do: deflated files whose deflated stream's start is not known (`deflated_at`, from
    plain_file), big endian ones (pydicom swaps their OW bytes when it reads the data
    set), palettes and Modality LUT Sequences (large tables), float pixels, or any value
    that does not convert cleanly."""
    deflated = header.transfer_syntax == DeflatedExplicitVRLittleEndian
    if (deflated and deflated_at is None) or header.transfer_syntax == ExplicitVRBigEndian or \
            header.photometric == "PALETTE COLOR":
        return None
    raw = ds.get_item(BaseTag(0x7FE00010), keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.value_tell is None or "ModalityLUTSequence" in ds or \
            (deflated and raw.length == UNDEFINED_LENGTH):
        return None
    values = HeaderValues(ds)
    # Deferred (not read), or read whole (undefined length, below the defer size).
    length = raw.length if raw.value is None else len(raw.value)
    try:
        options = tuple(sorted(pixel_options(values).items()))
        if any(not isinstance(v, (int, str)) for _, v in options):
            return None  # an Extended Offset Table (bytes): rare, and the whole-file path reads it
        if header.samples_per_pixel == 3:
            rescale: tuple[tuple[float, float], ...] = ()
            per_frame = False
        elif header.multiframe and (frames := frame_rescales(ds, len(header.frames))) is not None:
            rescale, per_frame = frames, True
        elif "RescaleSlope" in values and "RescaleIntercept" in values:
            slope, intercept = values.get("RescaleSlope"), values.get("RescaleIntercept")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (slope, intercept)):
                return None  # multi-valued or unparsed: the whole-file path rejects it with its reason
            rescale, per_frame = ((float(slope), float(intercept)),), False
        else:
            rescale, per_frame = (), False
        return PixelRef(raw.value_tell, length, options, rescale, per_frame, header_window(values),
                        max_value(values, header.photometric), deflated_at if deflated else None)
    except Exception:  # noqa: BLE001 - the whole-file path meets the same value and names the problem
        return None


def _check_pixels(ds: Dataset, v: HeaderValues, n_frames: int, file_size: int | None, max_decoded: int) -> None:
    """The declared pixels against the Pixel Data present and the decoded-size limit
    (limits.check_file); a header too garbled to say is left to the decoder."""
    if n_frames < 0:
        raise Rejected(reasons.UNREADABLE, f"Number of Frames is negative ({n_frames}); the header is corrupt")
    rows, columns = _int(v.get("Rows")), _int(v.get("Columns"))
    samples, bits = _int(v.get("SamplesPerPixel"), 1) or 1, _int(v.get("BitsAllocated"), 8) or 8
    raw = ds.get_item(BaseTag(0x7FE00010), keep_deferred=True) if "PixelData" in ds else None
    length: int | None = None
    if isinstance(raw, RawDataElement):  # as read: deferred (value None) or read whole
        length = raw.length if raw.value is None or raw.length == UNDEFINED_LENGTH else len(raw.value)
    elif raw is not None:  # already converted by pydicom
        length = UNDEFINED_LENGTH if raw.is_undefined_length else \
            len(raw.value) if isinstance(raw.value, bytes) else None
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    encapsulated = length == UNDEFINED_LENGTH or (bool(syntax) and pydicom.uid.UID(syntax).is_encapsulated)
    limits.check_file(rows, columns, samples, bits, n_frames, None if encapsulated else length, encapsulated,
                      file_size, max_decoded)


def header_from_dataset(ds: Dataset, path: str, file_size: int | None = None,
                        max_decoded: int = DEFAULT_LIMITS.max_decoded) -> FileHeader:
    """Extracts a FileHeader from a dataset read with or without pixels; its declared
    pixels are checked first (`file_size`: the file's bytes, when known)."""
    meta = getattr(ds, "file_meta", None)
    v = HeaderValues(ds)
    if not any(k in v for k in ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "SeriesInstanceUID")) and (
            meta is None or "MediaStorageSOPClassUID" not in meta):
        raise Rejected(reasons.UNREADABLE, "no recognizable data set follows the file meta; the file is corrupt")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if v.get("Rows") and v.get("Columns") or "BitsAllocated" in v or _image_sop_class(ds):
            raise Rejected(reasons.TRUNCATED, "the header describes an image (Rows, Columns, Bits Allocated) but "
                           "the file ends before its Pixel Data: it is truncated, or a declared length runs past "
                           "its end")
        raise Rejected(reasons.NO_PIXEL_DATA, "the file holds no image (no Pixel Data element)")
    missing = [k for k in ("SeriesInstanceUID", "SOPInstanceUID", "Rows", "Columns") if not v.get(k)]
    if missing:
        raise Rejected(reasons.MISSING_ATTRIBUTE, f"required attribute(s) absent or empty: {', '.join(missing)}")
    n_frames = _int(v.get("NumberOfFrames"), 1) or 1
    _check_pixels(ds, v, n_frames, file_size, max_decoded)  # before anything is made per frame
    multiframe = n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds
    sop_uid = str(v.get("SOPInstanceUID"))
    frames = []
    time_offsets = _frame_time_offsets(v, n_frames) if multiframe else []
    geometry = with_per_frame(ds, lambda per_frame: frames_geometry(ds, per_frame, time_offsets)) \
        if multiframe else []
    for i in range(n_frames):
        if multiframe:
            position, orientation, temporal, times = geometry[i]
        else:
            position, orientation = v.get("ImagePositionPatient"), v.get("ImageOrientationPatient")
            temporal, times = _classic_temporal(v), candidate_times(v, CLASSIC_TIMES)
        frames.append(FrameRef(
            path=path, frame=i, sop_uid=sop_uid,
            instance_number=_int(v.get("InstanceNumber")),
            position=_floats(position, 3), orientation=_floats(orientation, 6),  # type: ignore[arg-type]
            temporal=float(temporal) if temporal not in (None, "") else None, times=times,
        ))
    return FileHeader(
        path=path,
        series_uid=str(v.get("SeriesInstanceUID")),
        sop_uid=sop_uid,
        patient_id=str(v.get("PatientID", "")),
        institution=str(v.get("InstitutionName", "")),
        modality=str(v.get("Modality", "OT")).upper(),
        manufacturer=str(v.get("Manufacturer", "")),
        frame_of_reference=str(v.get("FrameOfReferenceUID", "")),
        rows=_int(v.get("Rows")),
        columns=_int(v.get("Columns")),
        samples_per_pixel=_int(v.get("SamplesPerPixel"), 1),
        photometric=str(v.get("PhotometricInterpretation", "MONOCHROME2")),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
        pixel_spacing=pixel_spacing(v),
        multiframe=multiframe,
        frames=tuple(frames),
        identifiers=identifying_values(v),
        burned_in=str(v.get("BurnedInAnnotation", "") or "").strip().upper(),
        sop_class=str(v.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None
                                                   else "")),
        conversion_type=str(v.get("ConversionType", "") or "").strip().upper(),
        regions=ultrasound_regions(v),
        study_uid=str(v.get("StudyInstanceUID", "") or ""),
        accession=str(v.get("AccessionNumber", "") or ""),
    )


_REGION_CORNERS = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")


def ultrasound_regions(ds: HeaderValues) -> tuple[tuple[int, int, int, int], ...] | None:
    """The boxes of the Sequence of Ultrasound Regions (an item without its four corners
    as numbers is left out); None where the file has no such sequence."""
    if "SequenceOfUltrasoundRegions" not in ds:
        return None
    boxes = []
    for item in ds.get("SequenceOfUltrasoundRegions") or ():
        corners = [item.get(k) for k in _REGION_CORNERS]
        if all(isinstance(c, int) and not isinstance(c, bool) for c in corners):
            boxes.append((corners[0], corners[1], corners[2], corners[3]))
    return tuple(boxes)


def _without_file_meta(fileobj: IO[bytes], head: bytes) -> Rejected:
    """A file without the 'DICM' marker: an old ACR-NEMA style data set (missing its file
    meta) or not DICOM at all, told apart from its first bytes and, where those may start
    a data set, a parse of at most PROBE_BYTES of it."""
    looks_dicom = False
    if head[:2] in _DATASET_STARTS or _GROUP_8_ELEMENT.search(head):
        fileobj.seek(0)
        probe = io.BytesIO(fileobj.read(PROBE_BYTES))
        try:
            ds = pydicom.dcmread(probe, force=True, stop_before_pixels=True)
            looks_dicom = any(k in ds for k in ("SOPClassUID", "Rows", "SeriesInstanceUID"))
        except Exception:  # noqa: BLE001 - any parse failure means "not DICOM" here
            looks_dicom = False
        looks_dicom = looks_dicom or bool(_GROUP_8_ELEMENT.search(head))
    if looks_dicom:
        return Rejected(reasons.MISSING_FILE_META,
                        "no DICOM file meta information (no 'DICM' preamble); re-export as a Part 10 file")
    return Rejected(reasons.NOT_DICOM, "not a DICOM file (no 'DICM' marker at byte 128)")


@quiet_pydicom
def read_dataset(fileobj: IO[bytes], path: str, stop_before_pixels: bool = False,
                 defer_size: int | None = None, max_inflated: int = DEFAULT_LIMITS.max_inflated) -> Dataset:
    """dcmread with the failure modes of real archives mapped to reason codes; a deflated
    data set over `max_inflated` bytes is rejected before dcmread inflates it."""
    head = fileobj.read(512)
    fileobj.seek(0)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise _without_file_meta(fileobj, head)
    check_deflated_file(fileobj, max_inflated)
    try:
        ds = pydicom.dcmread(fileobj, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
    except NotImplementedError:
        raise Rejected(reasons.UNSUPPORTED_TRANSFER_SYNTAX, "the data set is encoded in a transfer syntax pydicom "
                       "cannot parse (expected a DICOM transfer syntax UID in the file meta)") from None
    except Exception as exc:  # noqa: BLE001 - InvalidDicomError, struct.error, zlib.error, BytesLengthException...
        raise Rejected(reasons.UNREADABLE, f"the header cannot be parsed ({type(exc).__name__}); "
                       "the file is truncated or corrupt") from None
    meta = ds.file_meta
    meta_ok = "MediaStorageSOPClassUID" in meta or "MediaStorageSOPInstanceUID" in meta
    corrupt = Rejected(reasons.UNREADABLE, "after the 'DICM' marker neither a valid file meta group nor a data "
                       "set follows: the file is corrupt")
    if len(ds) == 0:
        if not meta_ok:
            raise corrupt
        raise Rejected(reasons.TRUNCATED, "the file ends before its data set begins; it is truncated")
    if "TransferSyntaxUID" not in meta:
        if not meta_ok and not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows",
                                                     "SeriesInstanceUID")):
            raise corrupt
        raise Rejected(reasons.MISSING_FILE_META, "the file meta information has no Transfer Syntax UID")
    return ds


# What a reported path must not show (deid.safe_path): names and IDs. UIDs and dates are
# not listed: a path part holding one is hashed by its pattern, whatever the header says.
IDENTIFYING_KEYWORDS = ("PatientID", "PatientName", "OtherPatientIDs", "AccessionNumber", "InstitutionName",
                        "ReferringPhysicianName", "StudyID")


def identifying_values(ds: Dataset | HeaderValues) -> tuple[str, ...]:
    """The raw identifier values of a header, to keep them out of paths we report."""
    ds = ds if isinstance(ds, HeaderValues) else HeaderValues(ds)
    values = []
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            value = ds.get(keyword)
        except Exception:  # noqa: BLE001 - a malformed value is not worth failing over
            continue
        if value not in (None, ""):
            values.append(str(value))
    return tuple(values)


def _read_deferred_groups(ds: Dataset, fileobj: IO[bytes]) -> None:
    """An enhanced object's per-frame functional groups (over DEFER_BYTES in all but
    short clips) read now, as pydicom reads a deferred value on first use (the same
    bytes), so that `enhanced` can read their items plainly. Not in a deflated file,
    whose positions are in its inflated stream."""
    tag = BaseTag(PER_FRAME_GROUPS)
    raw = ds.get_item(tag, keep_deferred=True)
    meta = getattr(ds, "file_meta", None)
    if not isinstance(raw, RawDataElement) or raw.value is not None or raw.value_tell is None or \
            raw.length == UNDEFINED_LENGTH or meta is None or \
            meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return
    fileobj.seek(raw.value_tell)
    value = fileobj.read(raw.length)
    if len(value) == raw.length:
        ds[tag] = raw._replace(value=value)


def _size(fileobj: IO[bytes]) -> int | None:
    try:
        fileobj.seek(0, io.SEEK_END)
        return fileobj.tell()
    except (OSError, ValueError):
        return None
    finally:
        fileobj.seek(0)


@quiet_pydicom
def read_header(fileobj: IO[bytes], path: str, limits: InputLimits = DEFAULT_LIMITS) -> FileHeader:
    """The header pass of one file within `limits`: a deflated data set inflates to at most
    `max_inflated_mb`, the pixels it declares decode to at most `max_decoded_mb`."""
    file_size = _size(fileobj)
    # Large values (the pixels) are skipped, not read, yet their presence is known.
    plain = plain_dataset(fileobj, DEFER_BYTES, limits.max_inflated) if header_values.FAST_PATHS else None
    if plain is None:
        fileobj.seek(0)
        ds, deflated_at = read_dataset(fileobj, path, stop_before_pixels=False, defer_size=DEFER_BYTES,
                                       max_inflated=limits.max_inflated), None
    else:
        ds, deflated_at = plain
    _read_deferred_groups(ds, fileobj)
    try:
        header = header_from_dataset(ds, path, file_size, limits.max_decoded)
        return dataclasses.replace(header, pixels=pixel_ref(ds, header, deflated_at))
    except Rejected as exc:
        raise Rejected(exc.code, exc.message, identifying_values(ds)) from None
    except Exception as exc:  # noqa: BLE001 - a malformed value deep in a header
        raise Rejected(reasons.UNREADABLE, f"a header value cannot be interpreted ({type(exc).__name__})",
                       identifying_values(ds)) from None
