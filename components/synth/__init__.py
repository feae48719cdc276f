"""`medseq synth`: realistic synthetic DICOM studies whose label lives in time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .tasks import CLASSES, TASKS

if TYPE_CHECKING:
    from .generator import SynthStats

__all__ = ["CLASSES", "TASKS", "run"]


def run(task: str, patients: int, seed: int, out: str | Path, small: bool = False, target: str = "class",
        noise: float = 0.0) -> SynthStats:
    """Writes `out/dicom/` and `out/labels.csv`; same arguments, same bytes. `target`
    value (cine_ef): labels.csv also has the EF in % (`ef`), with `noise` EF points of
    measurement noise. cine_phase also writes `out/frame_labels.csv` (train.target: frames)."""
    from ..io.output_lock import claim
    from .generator import generate  # numpy, pydicom: only when writing

    claim(str(out), "synthetic data set")
    return generate(task, patients, seed, Path(out), small=small, target=target, noise=noise)
