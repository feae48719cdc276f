"""`medseq predict`: a raw DICOM folder -> class probabilities per series (a value; a
frames model's score per frame and its events in source frames; an anomaly model's
score and its label, the normal class or anomalous), printed as
an aligned table or JSON lines, with optional explanations (`--explain`): which frames
mattered (temporal occlusion) and where in them (Grad-CAM).

`medseq stream` (stream.py): a causal model reads a live series frame by frame, its state
carried from frame to frame (model/step.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from ...pipeline.errors import InputError
from ..io.output_lock import claim
from .executor import OUTSIDE_DOMAIN, Prediction, predict, prepare_folder

TOP_FRAMES = 3


def json_lines(results: list[Prediction]) -> str:
    return "\n".join(json.dumps(r.to_json()) for r in results)


def table(results: list[Prediction]) -> str:
    """One aligned row per series: key, predicted class, each class probability; a series
    that could not be read shows its reason instead."""
    classes = next((list(r.probabilities) for r in results if r.probabilities), [])
    head = ["series", "series_key", "predicted", *classes]
    rows = [[r.series, r.series_key[:16],
             f"{r.label} (anomaly score {r.anomaly_score:.3g})" if r.anomaly_score is not None else
             f"{r.value:.4g}{' ' + r.units if r.units else ''}" if r.value is not None else
             _events(r) if r.frame_values else r.label or "-",
             *([f"{r.probabilities[c]:.4f}" for c in classes] if r.probabilities else ["-"] * len(classes)),
             f"rejected {r.rejected}: {r.message}" if r.rejected else
             f"domain: {'; '.join(r.domain)}" if r.domain else ""] for r in results]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, [*widths, 0], strict=False)).rstrip() for row in [head, *rows]]
    return "\n".join(lines)


def _events(r: Prediction) -> str:
    """A frames model's events in source frames: "ed at 3.2, 19.1; es at 11.3"."""
    return "; ".join(f"{name} at {', '.join(f'{x:.1f}' for x in found) or 'none'}" for name, found in r.events.items())


def explanation(results: list[Prediction]) -> str:
    """Per series: the frames whose removal lowers the predicted class's probability most."""
    lines = []
    for r in results:
        if not r.frame_importance:
            continue
        ranked = sorted(range(len(r.frame_importance)), key=lambda t: -r.frame_importance[t])[:TOP_FRAMES]
        drivers = ", ".join(f"frame {t} ({r.frame_importance[t]:+.3f})" for t in ranked)
        answer = r.label if r.value is None else f"value {r.value:.4g}"
        lines.append(f"{r.series}: {answer} driven most by {drivers}")
    return "\n".join(lines)


def write_explanation(results: list[Prediction], path: str | Path) -> Path | None:
    """`path` (explain.json): every series' JSON, with, where the model gives Grad-CAM,
    `attribution` (an .npy of the (T, [D,] H, W) map, float16) and `overlay` (a PNG of the
    frames that drove the decision under their map), both in the folder
    `<stem>_attribution` beside it and named relative to it. Returns that folder, or None
    where no series has a map."""
    from ..model import plots

    path = Path(path)
    folder = path.with_name(f"{path.stem}_attribution")
    _refuse_foreign_file(path)
    if any(r.attribution is not None for r in results):
        claim(str(folder), "predict attributions")
    entries = []
    for index, r in enumerate(results):
        entry = r.to_json()
        if r.attribution is not None and r.frames is not None:
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"{index:04d}.npy", r.attribution.astype(np.float16))
            picks = plots.drivers(r.frame_importance, r.attribution)
            png = plots.attribution_overlay(r.frames, r.attribution, picks, f"{r.label}: where (Grad-CAM)")
            (folder / f"{index:04d}.png").write_bytes(base64.b64decode(png))
            entry.update(attribution=f"{folder.name}/{index:04d}.npy", overlay=f"{folder.name}/{index:04d}.png",
                         overlay_frames=picks)
        entries.append(entry)
    path.write_text(json.dumps(entries, indent=2) + "\n")
    return folder if folder.exists() else None


def _refuse_foreign_file(path: Path) -> None:
    """An existing FILE is replaced only when it is an explanation medseq wrote (a JSON
    list of series entries): a user's own file of that name is never overwritten."""
    if not path.exists():
        return
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        ours = isinstance(entries, list) and all(isinstance(e, dict) and "series_key" in e for e in entries)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise InputError(f"{path} exists and is not an explanation medseq wrote; expected a new file name for "
                         "--explain (medseq never overwrites what it did not write)")


__all__ = ["OUTSIDE_DOMAIN", "Prediction", "explanation", "json_lines", "predict", "prepare_folder", "table",
           "write_explanation"]
