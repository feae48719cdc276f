"""`dce_kinetics`: dynamic contrast-enhanced breast MR of a lesion, a 4-D acquisition
whose label only the order of the frames tells.

A few slices (2-4) through a lesion x 6-12 phases. The lesion's signal over the phases
is one set of values drawn per study, arranged in time by the class: `benign` (type I,
persistent enhancement: the values in rising order) or `malignant` (type III, wash-in
then wash-out: baseline, the peak at once, then the rest falling). Both classes take the
same values in a different order, the tissue does not change over time and the noise
is drawn alike, so a model blind to the order of the frames is at chance by
construction. Written as one
series of classic files or one enhanced multi-frame object.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from . import phantoms
from .dicom_writer import SeriesGeometry, Study, as_files, classic_series, enhanced_series, uid

SLICES = (2, 4)
PHASES = (6, 12)
PHASE_S = (60.0, 90.0)  # seconds between dynamic phases
CLASSES = ("benign", "malignant")


def lesion_curve(rng: np.random.Generator, phases: int, malignant: bool) -> np.ndarray:
    """Relative lesion signal per phase: the same values for either class, in its order."""
    values = np.sort(np.concatenate([[rng.uniform(0.15, 0.25)], rng.uniform(0.45, 1.0, phases - 1)]))
    if not malignant:
        return values  # type I: persistent enhancement
    return np.concatenate([values[:1], values[-1:], values[-2:0:-1]])  # type III: peak, then wash-out


def dce_frames(rng: np.random.Generator, scanner: phantoms.Scanner, matrix: int, slices: int,
               curve: np.ndarray) -> tuple[np.ndarray, float]:
    """(slices, phases, matrix, matrix) MR signal and the pixel spacing: a breast outline of
    tissue and a lesion on every slice, its size changing along z."""
    spacing = rng.uniform(160.0, 220.0) / matrix
    rows, cols = phantoms.grid(matrix, spacing)
    body_a, body_b = rng.uniform(60, 80), rng.uniform(70, 90)
    breast = ((rows - 20.0) / body_a) ** 2 + (cols / body_b) ** 2 <= 1.0
    center = (rng.uniform(-10, 30), rng.uniform(-30, 30))
    radius = rng.uniform(10.0, 20.0)  # mm: a 2-4 cm mass
    # The tissue around the lesion does not change over the phases: a frame is its lesion
    # level and fresh noise, nothing else, so the frames of either class are one set.
    tissue = rng.uniform(0.12, 0.2)
    scale = 1000.0 * scanner.gain
    out = np.empty((slices, len(curve), matrix, matrix), np.float32)
    for k in range(slices):
        r = radius * np.sqrt(max(0.2, 1.0 - ((k - (slices - 1) / 2) / slices) ** 2))
        lesion = (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= r * r
        noise = rng.standard_normal((len(curve), 2, matrix, matrix), dtype=np.float32) * np.float32(scanner.noise)
        for t, level in enumerate(curve):
            img = np.where(breast, np.float32(tissue), np.float32(0.0))
            img = np.where(lesion, np.float32(level), img)
            out[k, t] = np.hypot(img + noise[t, 0], noise[t, 1]) * scale
    return out, float(spacing)


def dce_kinetics(seed: int, study: Study, rng: np.random.Generator, matrix: int,
                 task: str) -> tuple[list[list[Dataset]], str]:
    """The study's dynamic series (one 4-D series) and its label."""
    malignant = bool(rng.random() < 0.5)
    slices, phases = int(rng.integers(SLICES[0], SLICES[1] + 1)), int(rng.integers(PHASES[0], PHASES[1] + 1))
    frames, spacing = dce_frames(rng, study.scanner, matrix, slices, lesion_curve(rng, phases, malignant))
    stored = np.clip(np.rint(frames), 0, 4095).astype(np.uint16).reshape(slices * phases, matrix, matrix)
    gap = float(rng.uniform(3.0, 5.0))
    offset = (matrix - 1) / 2 * spacing
    places = [(-offset, -offset, float(k * gap)) for k in range(slices)]
    step = float(rng.uniform(*PHASE_S))
    start = float(rng.uniform(8 * 3600, 17 * 3600))
    times = tuple(start + t * step for t in range(phases))
    geometry = SeriesGeometry((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), tuple(p for p in places for _ in range(phases)),
                              spacing, gap, None, tuple(range(1, phases + 1)) * slices)
    series_uid = uid(seed, "series", study.uid, "dce")
    extra = {"ScanningSequence": "GR", "SequenceVariant": "SP", "MagneticFieldStrength": 3.0,
             "NumberOfTemporalPositions": phases}
    enhanced = rng.random() < 0.3
    made = (enhanced_series if enhanced else classic_series)(study, series_uid, 5, "DYN T1 FS", "MR", stored,
                                                           geometry, (0.0, 1.0), seed, extra)
    for i, ds in enumerate(made if isinstance(made, list) else []):  # classic files
        t = i % phases  # classic files: each carries its temporal position and acquisition time
        ds.TemporalPositionIdentifier = t + 1
        seconds = times[t]
        ds.AcquisitionTime = f"{int(seconds // 3600):02d}{int(seconds % 3600 // 60):02d}{seconds % 60:09.6f}"
    return [as_files(made)], CLASSES[int(malignant)]
