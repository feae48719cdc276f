"""Numeric phantoms whose label lives in time (cine) or across slices (CT).

Each function returns physical values (MR signal, or Hounsfield units) as float32 plus
the ground truth it drew, so tests can check the pixels against the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scanner:
    """One vendor profile: what differs between sites' images."""

    manufacturer: str
    model: str
    matrix: int
    noise: float  # MR: fraction of blood signal; CT: HU standard deviation
    gain: float  # MR intensity scale; CT calibration offset in HU
    ct_signed: bool  # CT: signed storage with intercept 0, else unsigned with -1024


SCANNERS = (
    Scanner("SIEMENS", "Avanto", 256, 0.04, 1.0, False),
    Scanner("GE MEDICAL SYSTEMS", "Signa HDxt", 224, 0.07, 2.5, True),
    Scanner("Philips Medical Systems", "Ingenia", 192, 0.10, 0.6, False),
)
SMALL_MATRIX = {256: 64, 224: 56, 192: 48}


@dataclass(frozen=True)
class CineTruth:
    ejection_fraction: float
    ed_radius_mm: float
    radii_mm: tuple[float, ...]  # blood-pool equivalent radius per frame
    center_mm: tuple[float, float]
    pixel_spacing: float
    systole: float = 0.35  # the phase of end-systole (0 is end-diastole, 1 the next one)


def grid(matrix: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(matrix, dtype=np.float32) - (matrix - 1) / 2) * spacing
    return np.meshgrid(coords, coords, indexing="ij")  # (row mm, col mm)


# Heart size. Real end-systolic size tells the ejection fraction almost by itself, so a
# model shown one frame could pass for one that reads the cycle. Here the size of the
# cavity at a random point between end-diastole and end-systole (`anchor`: 0 is ED, 1
# is ES) is drawn from a wide log-uniform range whatever the class, so the ED and the
# ES sizes overlap between classes and only their ratio tells the EF. The best possible
# classifier of one frame's exact cavity radius reaches AUC 0.62 on ED or ES frames
# (benchmarks/bench_quality.py computes it), where the earlier draw gave 0.97 for ES.
CAVITY_MM = (15.0, 38.0)
ANCHOR = (0.1, 0.9)
FOV_MM = (170.0, 260.0)  # a cardiac field of view: the heart fills enough of a 64-pixel frame


def _cycle(n_frames: int, systole: float, phase: np.ndarray | None = None) -> np.ndarray:
    """0 at end-diastole, 1 at end-systole: contraction, then slower relaxation. `phase`:
    each frame's point in the cycle (0 end-diastole, wrapping at 1); one cycle over the
    frames when None."""
    phase = np.arange(n_frames) / n_frames if phase is None else np.mod(phase, 1.0)
    return np.where(phase < systole, 0.5 - 0.5 * np.cos(np.pi * phase / systole),
                    0.5 + 0.5 * np.cos(np.pi * (phase - systole) / (1 - systole)))


def cine_frames(
    rng: np.random.Generator, scanner: Scanner, matrix: int, n_frames: int, ef: float,
    cavity_scale: float = 1.0, noise_rng: np.random.Generator | None = None, phase: np.ndarray | None = None,
) -> tuple[np.ndarray, CineTruth]:
    """Short-axis cine over one heartbeat: a bright blood pool in a myocardial ring.

    Neither the end-diastolic nor the end-systolic size alone tells the class (see
    CAVITY_MM); the wall thickens in systole by a fraction drawn apart from the EF. Only
    the change of the blood pool between frames tells the ejection fraction. For one
    slice of a stack (cine_sax): `cavity_scale` narrows the cavity towards the apex and
    `noise_rng` draws the slice's own noise, `rng` giving every slice the same heart.
    `phase`: each frame's point in the cycle (cine_phase: several beats from any start).
    """
    spacing = rng.uniform(*FOV_MM) / matrix
    rows, cols = grid(matrix, spacing)
    cavity = float(np.exp(rng.uniform(*np.log(CAVITY_MM))))
    anchor = rng.uniform(*ANCHOR)
    ed_radius = cavity_scale * cavity * (1.0 - ef) ** (-anchor / 2)  # area scales by (1 - ef) from ED to ES
    es_radius = ed_radius * np.sqrt(1.0 - ef)
    wall, thickening = rng.uniform(6.0, 12.0), rng.uniform(0.2, 0.6)
    mediastinum = rng.uniform(30.0, 70.0)
    center = (rng.uniform(-25, 25), rng.uniform(-25, 25))
    ecc, angle = rng.uniform(0.0, 0.15), rng.uniform(0, np.pi)
    systole = rng.uniform(0.3, 0.4)  # fraction of the cycle spent contracting
    body_a, body_b = rng.uniform(120, 140), rng.uniform(90, 110)
    scale = 1000.0 * scanner.gain
    shape = _cycle(n_frames, systole, phase)
    radii = ed_radius - (ed_radius - es_radius) * shape
    outer = radii + wall * (1.0 + thickening * shape)

    cos_a, sin_a = np.cos(angle), np.sin(angle)
    dr, dc = rows - center[0], cols - center[1]
    u = (dr * cos_a + dc * sin_a) / (1 + ecc)
    v = (-dr * sin_a + dc * cos_a) / (1 - ecc)
    radius_map = np.sqrt(u * u + v * v)
    body = (rows / body_a) ** 2 + (cols / body_b) ** 2 <= 1.0
    # The lungs stop at the mediastinum, whose size is drawn on its own: a cut-out that
    # followed the end-diastolic heart would show its size in every frame.
    lung = ((rows / 70.0) ** 2 + ((np.abs(cols) - 55.0) / 35.0) ** 2 <= 1.0) & ~(radius_map < mediastinum)
    background = (np.where(body, 0.25, 0.0) - np.where(body & lung, 0.2, 0.0)).astype(np.float32)
    # All frames at once: the same draws, in the same order, as one frame at a time.
    noise = (noise_rng or rng).standard_normal((n_frames, 2, matrix, matrix), dtype=np.float32) * \
        np.float32(scanner.noise)
    img = np.where(radius_map[None] <= radii[:, None, None], np.float32(1.0),
                   np.where(radius_map[None] <= outer[:, None, None], np.float32(0.12), background[None]))
    frames = (np.hypot(img + noise[:, 0], noise[:, 1]) * scale).astype(np.float32)  # Rician magnitude
    truth = CineTruth(float(ef), float(ed_radius), tuple(float(r) for r in radii), center, float(spacing),
                      float(systole))
    return frames, truth


SLICE_MM = (3.0, 5.0)
MIN_NODULE_MM = 12.0  # diameter: solid nodules from here on are followed up


@dataclass(frozen=True)
class CtTruth:
    nodule_slices: tuple[int, ...]  # slice indices (ascending z) where the nodule shows
    nodule_center_mm: tuple[float, float, float] | None
    nodule_radius_mm: float
    slice_spacing: float
    pixel_spacing: float


def ct_slab(
    rng: np.random.Generator, scanner: Scanner, matrix: int, n_slices: int, nodule: bool
) -> tuple[np.ndarray, CtTruth]:
    """Axial chest slab in HU: vessels run through many slices, a nodule shows on 2-4.

    Thick-slice reconstructions (3 or 5 mm): the nodule is then 12-20 mm across, the
    sizes that are followed up, and 2-3 pixels wide in a 64-pixel frame of the whole
    chest. (With 1-2.5 mm slices it was 2-10 mm, a pixel or less there.)
    """
    fov = rng.uniform(320.0, 380.0)
    spacing = fov / matrix
    dz = float(rng.choice(SLICE_MM))
    rows, cols = grid(matrix, spacing)
    body_a, body_b = rng.uniform(120, 140), rng.uniform(150, 175)
    body = (rows / body_a) ** 2 + (cols / body_b) ** 2 <= 1.0
    lungs = [((rows + 5) / 95.0) ** 2 + ((cols - s * 70.0) / 55.0) ** 2 <= 1.0 for s in (-1, 1)]
    lung = lungs[0] | lungs[1]
    base = np.where(body, 40.0, -1000.0).astype(np.float32)
    base[lung] = -850.0
    n_vessels = int(rng.integers(4, 9))
    side = rng.choice([-1, 1], n_vessels)
    starts = np.stack([rng.uniform(-50, 40, n_vessels), side * rng.uniform(45, 95, n_vessels)], 1)
    slopes = rng.uniform(-0.25, 0.25, (n_vessels, 2))  # mm of drift per mm of z
    vradius = rng.uniform(1.5, 3.5, n_vessels)
    nod_radius = 0.0
    nod_center: tuple[float, float, float] | None = None
    if nodule:
        span = int(rng.integers(max(2, int(np.ceil(MIN_NODULE_MM / dz))), 5))  # slices the nodule covers
        nod_radius = span * dz / 2.0
        first = int(rng.integers(n_slices // 4, 3 * n_slices // 4 - span + 1))
        z0 = (first + (span - 1) / 2.0) * dz  # centred so exactly `span` slices cut it
        s = rng.choice([-1, 1])
        nod_center = (float(rng.uniform(-40, 30)), float(s * rng.uniform(50, 90)), z0)
    slices = np.empty((n_slices, matrix, matrix), np.float32)
    shown: list[int] = []
    for k in range(n_slices):
        z = k * dz
        img = base.copy()
        for (r0, c0), (sr, sc), rad in zip(starts, slopes, vradius, strict=True):
            img[(rows - r0 - sr * z) ** 2 + (cols - c0 - sc * z) ** 2 <= rad * rad] = 40.0
        if nod_center is not None:
            half = nod_radius * nod_radius - (z - nod_center[2]) ** 2
            if half > 0.5:
                shown.append(k)
                img[(rows - nod_center[0]) ** 2 + (cols - nod_center[1]) ** 2 <= half] = 30.0
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(scanner.noise * 200.0) + scanner.gain * 6.0
        slices[k] = img
    truth = CtTruth(tuple(shown), nod_center, nod_radius, dz, float(spacing))
    return slices, truth


def localizer(rng: np.random.Generator, matrix: int) -> np.ndarray:
    """A coronal scout: a body silhouette, enough to look like one."""
    rows, cols = grid(matrix, 500.0 / matrix)
    img = np.where((rows / 230.0) ** 2 + (cols / 160.0) ** 2 <= 1.0, 600.0, 0.0)
    return (img + rng.normal(0, 20, img.shape)).astype(np.float32)[None]
