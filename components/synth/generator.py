"""Builds whole synthetic studies: patients, studies, labeled series, localizers, junk.

Everything random comes from one numpy Generator per (seed, patient), so the output is
byte-for-byte the same for a seed, and patient k is the same whatever the count.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ...pipeline.errors import ConfigError
from . import phantoms
from .cine_sax import cine_sax
from .dce import dce_kinetics
from .dicom_writer import (
    SYNTAX_WEIGHTS,
    TRANSFER_SYNTAXES,
    Patient,
    SeriesGeometry,
    Study,
    as_files,
    classic_series,
    encode,
    enhanced_series,
    uid,
)
from .tasks import EF_RANGES, PHASE_CYCLES, PHASE_EF_RANGE, PHASE_EVENTS, PHASE_FRAMES, VALUE_EF_RANGE

SITES = ("St. Elsewhere General Hospital", "Northfield University Medical Center",
         "Lakeside Imaging Clinic")
_FIRST = ("ANNA", "JOHN", "MARIA", "PETER", "LINDA", "OMAR", "CHEN", "SOFIA", "IVAN", "GRACE",
          "LUCAS", "AMARA", "HANS", "PRIYA", "MATEO", "YUKI")
_LAST = ("SMITH", "MUELLER", "GARCIA", "NOVAK", "OKAFOR", "TANAKA", "ROSSI", "DUBOIS",
         "KOWALSKI", "NGUYEN", "JENSEN", "SILVA", "HASSAN", "BROWN", "IVANOVA", "PATEL")


@dataclass
class SynthStats:
    files: int = 0
    slices: int = 0
    series: int = 0
    labeled: dict[str, int] = field(default_factory=dict)


def _rng(seed: int, *parts: object) -> np.random.Generator:
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _patient(seed: int, index: int) -> Patient:
    rng = _rng(seed, "patient", index)
    name = f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}"
    birth = f"{rng.integers(1935, 2001)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    return Patient(name, f"MRN{rng.integers(10**6, 10**7)}", birth, str(rng.choice(["F", "M"])),
                   int(rng.integers(len(SITES))))


def _study(seed: int, task: str, patient: Patient, k: int) -> Study:
    rng = _rng(seed, "study", patient.patient_id, k)
    # A site mostly scans on its own vendor's machine.
    vendor = patient.site if rng.random() < 0.8 else int(rng.integers(len(phantoms.SCANNERS)))
    date = f"{rng.integers(2019, 2026)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    time = f"{rng.integers(7, 19):02d}{rng.integers(60):02d}{rng.integers(60):02d}"
    referring = f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}^^DR"
    return Study(patient, uid(seed, task, "study", patient.patient_id, k), date, time,
                 f"A{rng.integers(10**7, 10**8)}", referring, phantoms.SCANNERS[vendor],
                 SITES[patient.site], uid(seed, task, "for", patient.patient_id, k))


def _cine(seed: int, study: Study, rng: np.random.Generator, matrix: int,
          task: str) -> tuple[list[list[Dataset]], str]:
    ranges = EF_RANGES[task]
    label = sorted(ranges)[int(rng.random() * len(ranges))]
    return _cine_series(seed, study, rng, matrix, rng.uniform(*ranges[label]))[0], label


def _cine_value(seed: int, study: Study, rng: np.random.Generator, matrix: int,
                task: str) -> tuple[list[list[Dataset]], str]:
    """cine_ef for `--target value`: an EF drawn over the whole clinical range (no gaps
    between classes), and the label its EF in % as the frames show it (1 - ESV/EDV of the
    blood pool over the frames written), exactly."""
    series, truth = _cine_series(seed, study, rng, matrix, rng.uniform(*VALUE_EF_RANGE))
    areas = np.square(np.asarray(truth.radii_mm))
    return series, repr(float(100.0 * (1.0 - areas.min() / areas.max())))


def _cine_phase(seed: int, study: Study, rng: np.random.Generator, matrix: int,
                task: str) -> tuple[list[list[Dataset]], str, list[tuple[int, str]]]:
    """cine_phase: a clip of 1.3-2.4 beats from a random start phase; its class (EF < 40 %),
    and its key frames: every end-diastole (ed) and end-systole (es) the clip holds, each
    at the frame nearest the event (EchoNet traces such frames)."""
    n = int(rng.integers(PHASE_FRAMES[0], PHASE_FRAMES[1] + 1))
    cycles, start = rng.uniform(*PHASE_CYCLES), rng.uniform(0.0, 1.0)
    phase = start + np.arange(n) * cycles / n
    ef = rng.uniform(*PHASE_EF_RANGE)
    series, truth = _cine_series(seed, study, rng, matrix, ef, n=n, phase=phase, beats=cycles)
    keys = []
    for k in range(int(np.floor(start)), int(np.ceil(phase[-1])) + 1):
        for offset, event in zip((0.0, truth.systole), PHASE_EVENTS, strict=True):
            at = (k + offset - start) * n / cycles  # the event's time in frames
            if -0.5 < at < n - 0.5:
                keys.append((int(round(at)), event))
    return series, "reduced_ef" if ef < 0.40 else "normal", sorted(keys)


def _cine_series(seed: int, study: Study, rng: np.random.Generator, matrix: int, ef: float, n: int = 0,
                 phase: np.ndarray | None = None,
                 beats: float = 1.0) -> tuple[list[list[Dataset]], phantoms.CineTruth]:
    n = n or int(rng.integers(16, 31))
    frames, truth = phantoms.cine_frames(rng, study.scanner, matrix, n, ef, phase=phase)
    stored = np.clip(np.rint(frames), 0, 4095).astype(np.uint16)
    row = np.array([0.70, 0.70, -0.14])
    row /= np.linalg.norm(row)
    col = np.cross(row, np.array([0.2, -0.3, 0.93]))
    col /= np.linalg.norm(col)
    offset = (matrix - 1) / 2 * truth.pixel_spacing
    ox, oy, oz = (float(x) for x in np.array([10.0, -20.0, 35.0]) - offset * (row + col))
    origin = (ox, oy, oz)
    rr = 60000.0 / rng.uniform(55, 95)
    geometry = SeriesGeometry(tuple(row) + tuple(col), (origin,) * n, truth.pixel_spacing, 8.0,
                              tuple(beats * rr * t / n for t in range(n)))
    series_uid = uid(seed, "series", study.uid, "cine")
    extra = {"CardiacNumberOfImages": n, "NominalInterval": round(rr), "HeartRate": round(60000 / rr),
             "ScanningSequence": "GR", "SequenceVariant": "SS", "MagneticFieldStrength": 1.5}
    make = enhanced_series if rng.random() < 0.25 else classic_series
    return [as_files(make(study, series_uid, 3, "CINE SAX", "MR", stored, geometry, (0.0, 1.0), seed, extra))], truth


def _ct(seed: int, study: Study, rng: np.random.Generator, matrix: int,
        task: str) -> tuple[list[list[Dataset]], str]:
    label = "nodule" if rng.random() < 0.5 else "clear"
    n = int(rng.integers(16, 49))
    hu, truth = phantoms.ct_slab(rng, study.scanner, matrix, n, label == "nodule")
    if study.scanner.ct_signed:
        stored, rescale = np.clip(np.rint(hu), -2048, 3071).astype(np.int16), (0.0, 1.0)
    else:
        stored, rescale = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16), (-1024.0, 1.0)
    half = (matrix - 1) / 2 * truth.pixel_spacing
    z0 = float(rng.uniform(-200, -100))
    positions = tuple((-half, -half, z0 + k * truth.slice_spacing) for k in range(n))
    geometry = SeriesGeometry((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), positions, truth.pixel_spacing,
                              truth.slice_spacing)
    series_uid = uid(seed, "series", study.uid, "ct")
    extra = {"KVP": 120, "ConvolutionKernel": "B30f"}
    make = enhanced_series if rng.random() < 0.25 else classic_series
    return [as_files(make(study, series_uid, 2, "CHEST 1.0", "CT", stored, geometry, rescale, seed, extra))], label


def _localizer(seed: int, study: Study, rng: np.random.Generator, matrix: int, modality: str) -> list[Dataset]:
    img = np.clip(phantoms.localizer(rng, matrix), 0, 4095).astype(np.uint16)
    spacing = 500.0 / matrix
    geometry = SeriesGeometry((1.0, 0.0, 0.0, 0.0, 0.0, -1.0), ((-250.0, 0.0, 250.0),), spacing, 10.0)
    series_uid = uid(seed, "series", study.uid, "loc")
    datasets = classic_series(study, series_uid, 1, "LOCALIZER", modality, img, geometry,
                              (0.0, 1.0), seed, {})
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return datasets


def _paths(rng: np.random.Generator, patient_index: int, study_index: int, series_number: int,
           count: int) -> list[str]:
    """PACS-style tree (PAxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx) or a flat folder of random names."""
    if (patient_index + study_index) % 3 == 2:
        return [f"flat/{rng.integers(16**8):08X}.dcm" for _ in range(count)]
    base = f"PA{patient_index:06d}/ST{study_index:06d}/SE{series_number:06d}"
    return [f"{base}/IM{k:06d}" for k in range(count)]


def generate(task: str, patients: int, seed: int, out: Path, small: bool = False, target: str = "class",
             noise: float = 0.0) -> SynthStats:
    """Writes `out/dicom/...` and `out/labels.csv` for `patients` patients. With `target`
    value (cine_ef only), labels.csv also has an `ef` column: each series' ejection
    fraction in %, plus Gaussian measurement noise of `noise` EF points (a reader's
    tracing error: a perfect fit is then impossible), and its class by EF < 40 %.
    cine_phase also writes `out/frame_labels.csv`: the ED and ES frames of each clip."""
    makers: dict[str, Callable[[int, Study, np.random.Generator, int, str], tuple[list[list[Dataset]], str]]] = {
        "ct_nodule": _ct, "cine_sax": cine_sax, "dce_kinetics": dce_kinetics}
    value = target == "value"
    if value and task != "cine_ef":
        raise ConfigError(f"synth: --target value is written for cine_ef, found task {task}")
    if target == "frames" and task != "cine_phase":
        raise ConfigError(f"synth: --target frames is written for cine_phase, found task {task}")
    make_series = _cine_value if value else makers.get(task, _cine)
    frame_rows: list[tuple[str, int, str]] = []
    modality = "CT" if task == "ct_nodule" else "MR"
    dicom_root = out / "dicom"
    dicom_root.mkdir(parents=True, exist_ok=True)
    stats = SynthStats()
    labels: list[tuple[str, ...]] = []
    for pi in range(patients):
        patient = _patient(seed, pi)
        rng = _rng(seed, "series", pi)
        n_studies = 2 if rng.random() < 0.3 else 1
        for si in range(n_studies):
            study = _study(seed, task, patient, si)
            matrix = phantoms.SMALL_MATRIX[study.scanner.matrix] if small else study.scanner.matrix
            if task == "cine_phase":
                labeled, label, keys = _cine_phase(seed, study, rng, matrix, task)
                frame_rows += [(labeled[0][0].SeriesInstanceUID, frame, event) for frame, event in keys]
            else:
                labeled, label = make_series(seed, study, rng, matrix, task)  # one series, or one per slice
            if value:  # the EF as measured: the truth plus a reader's error
                ef = float(label) + noise * float(_rng(seed, "measurement", pi, si).standard_normal())
                label = "reduced_ef" if float(label) < 40.0 else "normal"
            for datasets in labeled:
                labels.append((datasets[0].SeriesInstanceUID, label, *([f"{ef:.2f}"] if value else [])))
                stats.labeled[label] = stats.labeled.get(label, 0) + 1
            syntax = TRANSFER_SYNTAXES[int(rng.choice(len(TRANSFER_SYNTAXES), p=SYNTAX_WEIGHTS))]
            for series_number, series in ([(d[0].SeriesNumber, d) for d in labeled] +
                                          [(1, _localizer(seed, study, rng, matrix, modality))]):
                paths = _paths(rng, pi, si, series_number, len(series))
                for ds, rel in zip(series, paths, strict=True):
                    stats.slices += int(ds.get("NumberOfFrames", 1))
                    _write(encode(ds, syntax), dicom_root / rel)
                    stats.files += 1
                stats.series += 1
    for rel, payload in _junk(seed):
        (dicom_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (dicom_root / rel).write_bytes(payload)
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["series_instance_uid", "label", *(["ef"] if value else [])])
        writer.writerows(sorted(labels))
    if task == "cine_phase":  # train.target: frames
        with open(out / "frame_labels.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["series_instance_uid", "frame", "label"])
            writer.writerows(sorted(frame_rows))
    return stats


def _write(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _junk(seed: int) -> Iterator[tuple[str, bytes]]:
    """Files every real export carries that are not DICOM."""
    rng = _rng(seed, "junk")
    yield "README.TXT", b"Exported by PACS viewer. Not for diagnostic use.\r\n"
    yield "flat/Thumbs.db", bytes(rng.integers(0, 256, 512, dtype=np.uint8))
    yield "PA000000/.DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(64)
