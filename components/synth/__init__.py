"""`medseq synth`: realistic synthetic DICOM studies whose label lives in time."""

from __future__ import annotations

from pathlib import Path

from medseq.components.synth.generator import CLASSES, TASKS, SynthStats, generate

__all__ = ["CLASSES", "TASKS", "SynthStats", "run"]


def run(task: str, patients: int, seed: int, out: str | Path, small: bool = False) -> SynthStats:
    """Writes `out/dicom/` and `out/labels.csv`; same arguments, same bytes."""
    return generate(task, patients, seed, Path(out), small=small)
