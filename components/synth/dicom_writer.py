"""Turns phantom arrays into DICOM datasets the way scanners export them.

Classic single-frame objects (MR/CT Image Storage, one file per slice or frame) and
enhanced multi-frame objects (Enhanced MR/CT, functional groups) carrying the same
geometry, timing, rescale and identifiers. All UIDs derive from the generator's seed.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from .phantoms import Scanner

MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")

NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
COMPRESSED_SYNTAXES = tuple(ts for ts in (RLELossless, JPEGLSLossless, JPEG2000Lossless)
                            if get_encoder(ts).is_available)
TRANSFER_SYNTAXES = NATIVE_SYNTAXES + COMPRESSED_SYNTAXES
# How often each syntax is drawn: native ones dominate real archives; JPEG 2000 is the
# slowest encoder, so it is drawn least.
_WEIGHTS = {JPEG2000Lossless: 1.0, RLELossless: 2.0, JPEGLSLossless: 2.0, DeflatedExplicitVRLittleEndian: 1.0}
_RAW = [_WEIGHTS.get(ts, 3.0) for ts in TRANSFER_SYNTAXES]
SYNTAX_WEIGHTS = [w / sum(_RAW) for w in _RAW]


@dataclass(frozen=True)
class Patient:
    name: str
    patient_id: str
    birth_date: str
    sex: str
    site: int  # index into SITES


@dataclass(frozen=True)
class Study:
    patient: Patient
    uid: str
    date: str
    time: str
    accession: str
    referring: str
    scanner: Scanner
    site_name: str
    frame_of_reference: str


@dataclass(frozen=True)
class SeriesGeometry:
    """Where each frame sits: orientation (6 cosines), one position per frame, spacing."""

    orientation: tuple[float, ...]
    positions: tuple[tuple[float, float, float], ...]
    pixel_spacing: float
    slice_thickness: float
    trigger_times: tuple[float, ...] | None = None  # ms, cine only
    temporal_indices: tuple[int, ...] | None = None  # an enhanced 4-D object's TemporalPositionIndex per frame


def uid(seed: int, *parts: object) -> str:
    """A UID in the 2.25 (UUID-derived) form, fixed by the seed and what it names.

    pydicom's generate_uid ignores its entropy sources without a prefix (it takes a
    random UUID), so the 128-bit value is derived here: same seed, same UIDs.
    """
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _base_dataset(study: Study, series_uid: str, sop_class: UID, sop_uid: str, modality: str) -> Dataset:
    ds = Dataset()
    p = study.patient
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.uid, series_uid
    ds.FrameOfReferenceUID = study.frame_of_reference
    ds.PatientName, ds.PatientID = p.name, p.patient_id
    ds.PatientBirthDate, ds.PatientSex = p.birth_date, p.sex
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.time
    ds.AccessionNumber, ds.ReferringPhysicianName = study.accession, study.referring
    ds.InstitutionName = study.site_name
    ds.Manufacturer, ds.ManufacturerModelName = study.scanner.manufacturer, study.scanner.model
    ds.Modality, ds.StudyID = modality, study.accession[-4:]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PositionReferenceIndicator = ""
    return ds


def _pixel_module(ds: Dataset, stored: np.ndarray, bits_stored: int) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(stored.dtype == np.int16)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


def classic_series(study: Study, series_uid: str, number: int, description: str, modality: str,
                   stored: np.ndarray, geometry: SeriesGeometry, rescale: tuple[float, float],
                   seed: int, extra: dict[str, object]) -> list[Dataset]:
    """One single-frame dataset per slice or frame.

    What the frames share is built once and copied element by element (setting a
    pydicom attribute costs far more than copying its element), then each frame gets
    its own UID, number, position, timing and pixels.
    """
    sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
    template = _base_dataset(study, series_uid, sop_class, "", modality)
    template.SeriesNumber, template.SeriesDescription = number, description
    template.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality == "CT" else "OTHER"]
    template.ImageOrientationPatient = [round(x, 6) for x in geometry.orientation]
    template.PixelSpacing = [round(geometry.pixel_spacing, 6)] * 2
    template.SliceThickness = geometry.slice_thickness
    if modality == "CT":
        template.RescaleIntercept, template.RescaleSlope, template.RescaleType = rescale[0], rescale[1], "HU"
        template.WindowCenter, template.WindowWidth = -600, 1500
    for key, value in extra.items():
        setattr(template, key, value)
    _pixel_module(template, stored[0], 12 if stored.dtype == np.uint16 else 16)
    del template.PixelData
    normal = _normal(geometry.orientation)
    out = []
    for k in range(stored.shape[0]):
        ds = Dataset({tag: copy.copy(element) for tag, element in template.items()})
        ds.SOPInstanceUID = uid(seed, series_uid, k)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(x, 4) for x in geometry.positions[k]]
        ds.SliceLocation = round(float(np.dot(normal, geometry.positions[k])), 4)
        if geometry.trigger_times is not None:
            ds.TriggerTime = round(geometry.trigger_times[k], 2)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        out.append(ds)
    return out


def enhanced_series(study: Study, series_uid: str, number: int, description: str, modality: str,
                    stored: np.ndarray, geometry: SeriesGeometry, rescale: tuple[float, float],
                    seed: int, extra: dict[str, object]) -> Dataset:
    """One multi-frame dataset with shared and per-frame functional groups."""
    sop_class = ENHANCED_CT_IMAGE if modality == "CT" else ENHANCED_MR_IMAGE
    ds = _base_dataset(study, series_uid, sop_class, uid(seed, series_uid, "mf"), modality)
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, 1, description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME" if modality == "CT" else "MIXED", "NONE"]
    ds.NumberOfFrames = stored.shape[0]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [round(geometry.pixel_spacing, 6)] * 2
    measures.SliceThickness = geometry.slice_thickness
    shared.PixelMeasuresSequence = Sequence([measures])
    orient = Dataset()
    orient.ImageOrientationPatient = [round(x, 6) for x in geometry.orientation]
    shared.PlaneOrientationSequence = Sequence([orient])
    if modality == "CT":
        transform = Dataset()
        transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = rescale[0], rescale[1], "HU"
        shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k, position in enumerate(geometry.positions):
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [round(x, 4) for x in position]
        item.PlanePositionSequence = Sequence([pos])
        content = Dataset()
        content.InStackPositionNumber = k + 1
        if geometry.temporal_indices is not None:
            content.TemporalPositionIndex = geometry.temporal_indices[k]
        elif geometry.trigger_times is not None:
            content.TemporalPositionIndex = k + 1
        if geometry.trigger_times is not None:
            cardiac = Dataset()
            cardiac.NominalCardiacTriggerDelayTime = round(geometry.trigger_times[k], 2)
            item.CardiacSynchronizationSequence = Sequence([cardiac])
        item.FrameContentSequence = Sequence([content])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    for key, value in extra.items():
        setattr(ds, key, value)
    _pixel_module(ds, stored, 12 if stored.dtype == np.uint16 else 16)
    return ds


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))


def encode(ds: Dataset, transfer_syntax: UID) -> Dataset:
    """Adds the file meta and compresses the pixels for the chosen transfer syntax."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if transfer_syntax.is_compressed:
        ds.compress(transfer_syntax, encoding_plugin="pylibjpeg" if transfer_syntax == RLELossless else "",
                    generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = transfer_syntax
    ds.preamble = b"\x00" * 128
    return ds


def as_files(made: list[Dataset] | Dataset) -> list[Dataset]:
    """A series as its files: classic_series' list, or enhanced_series' one object."""
    return made if isinstance(made, list) else [made]
