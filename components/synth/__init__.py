"""`medseq synth`: realistic synthetic DICOM studies whose label lives in time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .tasks import CLASSES, TASKS

if TYPE_CHECKING:
    from .generator import SynthStats

__all__ = ["CLASSES", "TASKS", "run", "series_frames"]


def run(task: str, patients: int, seed: int, out: str | Path, small: bool = False, target: str = "class",
        noise: float = 0.0) -> SynthStats:
    """Writes `out/dicom/` and `out/labels.csv`; same arguments, same bytes. `target`
    value (cine_ef): labels.csv also has the EF in % (`ef`), with `noise` EF points of
    measurement noise. cine_phase also writes `out/frame_labels.csv` (train.target: frames)."""
    from ..io.output_lock import claim
    from .generator import generate  # numpy, pydicom: only when writing

    claim(str(out), "synthetic data set")
    return generate(task, patients, seed, Path(out), small=small, target=target, noise=noise)


def series_frames(kind: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic series of another task, as a model's input would hold it:
    (frames, size, size) float32 in [0, 1]. `kind` ct: an axial chest CT slab through
    its slices (a window of -1000 to 400 HU); cine: a short-axis cine MR over one
    heartbeat (scaled by its 99.5th percentile). What evaluate's `other_task` shift shows a model."""
    from . import phantoms

    scanner = phantoms.SCANNERS[int(rng.integers(len(phantoms.SCANNERS)))]
    if kind == "ct":
        hu, _ = phantoms.ct_slab(rng, scanner, size, frames, nodule=bool(rng.integers(2)))
        x = (hu + 1000.0) / 1400.0
    elif kind == "cine":
        mr, _ = phantoms.cine_frames(rng, scanner, size, frames, float(rng.uniform(0.2, 0.7)))
        x = mr / max(float(np.percentile(mr, 99.5)), 1e-6)
    else:
        raise ValueError(f"unknown series kind {kind!r}; expected ct or cine")
    return np.clip(x, 0.0, 1.0).astype(np.float32)
