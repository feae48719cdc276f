"""`cine_sax`: short-axis cine over the whole ventricle, a 4-D acquisition.

6-12 slices from base to apex x 16-30 phases. Every slice shows the same heart (one draw
of its geometry and cycle), its cavity narrowing towards the apex; each slice contracts
by an ejection fraction of its own. The label is the volumetric ejection fraction, the
blood-pool areas summed over all slices at end-diastole and end-systole (Simpson's
method): `reduced_ef` below 40 %. A reduced study has a dysfunctional region (a run of
slices barely contracting) while its other slices contract normally, so no single slice
tells the class. GE and Philips write the whole stack as one series (classic files, or an
enhanced multi-frame object), Siemens one series per slice, as these vendors commonly do.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from . import phantoms
from .dicom_writer import SeriesGeometry, Study, as_files, classic_series, enhanced_series, uid
from .tasks import SAX_EF

SLICES = (6, 12)
PHASES = (16, 30)
SLICE_GAP_MM = (8.0, 10.0)


def _slice_efs(rng: np.random.Generator, label: str, slices: int) -> np.ndarray:
    """Per-slice ejection fractions for a study of `label`: all normal, or a dysfunctional
    run of 40-80 % of the slices among normal ones."""
    efs = rng.uniform(0.50, 0.72, slices)
    if label == "reduced_ef":
        run = int(rng.integers(max(2, slices * 2 // 5), max(3, slices * 4 // 5) + 1))
        start = int(rng.integers(0, slices - run + 1))
        efs[start:start + run] = rng.uniform(0.0, 0.15, run)
    return efs


def _radii(heart_seed: int, scanner: phantoms.Scanner, phases: int, efs: np.ndarray,
           scales: np.ndarray) -> list[tuple[float, ...]]:
    """Each slice's blood-pool radius per phase, as cine_frames draws them (they do not
    depend on the matrix: a 2-pixel render is enough)."""
    return [phantoms.cine_frames(np.random.default_rng(heart_seed), scanner, 2, phases, float(ef),
                                 cavity_scale=float(scale))[1].radii_mm for ef, scale in zip(efs, scales, strict=True)]


def volumetric_ef(radii: list[tuple[float, ...]]) -> float:
    """1 - ESV/EDV with each phase's volume the sum of the slices' blood-pool areas."""
    volume = np.sum(np.square(np.asarray(radii)), axis=0)  # per phase (slice thickness and pi cancel)
    return float(1.0 - volume.min() / volume.max())


def cine_sax(seed: int, study: Study, rng: np.random.Generator, matrix: int,
             task: str) -> tuple[list[list[Dataset]], str]:
    """The study's cine stack as series (one, or one per slice) and its label."""
    label = "reduced_ef" if rng.random() < 0.5 else "normal"
    slices, phases = int(rng.integers(SLICES[0], SLICES[1] + 1)), int(rng.integers(PHASES[0], PHASES[1] + 1))
    scales = np.sqrt(1.0 - 0.75 * (np.arange(slices) / (slices - 1)) ** 2)  # base to apex
    heart_seed = int(rng.integers(2**63))
    low, high = SAX_EF[label]
    for _ in range(200):  # the volumetric EF inside the class's range, never in the gap between classes
        efs = _slice_efs(rng, label, slices)
        if low <= volumetric_ef(_radii(heart_seed, study.scanner, phases, efs, scales)) <= high:
            break
    frames = []
    for k in range(slices):
        stack, truth = phantoms.cine_frames(np.random.default_rng(heart_seed), study.scanner, matrix, phases,
                                            float(efs[k]), cavity_scale=float(scales[k]),
                                            noise_rng=np.random.default_rng([heart_seed, k]))
        frames.append(np.clip(np.rint(stack), 0, 4095).astype(np.uint16))
    row = np.array([0.70, 0.70, -0.14]) / np.linalg.norm([0.70, 0.70, -0.14])
    col = np.cross(row, np.array([0.2, -0.3, 0.93]))
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    gap = float(rng.uniform(*SLICE_GAP_MM))
    offset = (matrix - 1) / 2 * truth.pixel_spacing
    origin = np.array([10.0, -20.0, 35.0]) - offset * (row + col)
    rr = 60000.0 / rng.uniform(55, 95)
    times = tuple(rr * t / phases for t in range(phases))
    extra = {"CardiacNumberOfImages": phases, "NominalInterval": round(rr), "ScanningSequence": "GR",
             "SequenceVariant": "SS", "MagneticFieldStrength": 1.5}
    places = [(float(x), float(y), float(z)) for x, y, z in (origin + k * gap * normal for k in range(slices))]
    series_uid = uid(seed, "series", study.uid, "sax")
    if study.scanner.manufacturer == "SIEMENS":  # one series per slice: 3-D cines
        return [classic_series(study, f"{series_uid}.{k + 1}", 10 + k, f"CINE SAX {k + 1}", "MR", frames[k],
                               SeriesGeometry(tuple(row) + tuple(col), (places[k],) * phases,
                                              truth.pixel_spacing, 8.0, times), (0.0, 1.0), seed, extra)
                for k in range(slices)], label
    geometry = SeriesGeometry(tuple(row) + tuple(col), tuple(p for p in places for _ in range(phases)),
                              truth.pixel_spacing, 8.0, times * slices, tuple(range(1, phases + 1)) * slices)
    stored = np.concatenate(frames)
    make = enhanced_series if rng.random() < 0.25 else classic_series
    return [as_files(make(study, series_uid, 3, "CINE SAX STACK", "MR", stored, geometry, (0.0, 1.0), seed,
                          extra))], label
