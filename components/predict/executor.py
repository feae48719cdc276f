"""Every series under a raw DICOM folder -> class probabilities.

It runs the very preprocessing ingest ran (the config travels inside the SavedModel,
assets.extra/medseq_spec.json) and calls the model's `predict_frames` signature. A
series that cannot be read gets its rejection reason; the others still get predicted.
"""

from __future__ import annotations

import os
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...pipeline import features as F
from ...pipeline.config import SAFE_PIXEL_PHI, PixelPhiConfig, PreprocessConfig, from_dict
from ...pipeline.errors import InputError
from ..ingest import deid, storage
from ..ingest.steps import input_files, read_file_header, real_root
from ..preprocessing import reasons
from ..preprocessing.geometry import OrderedSeries
from ..preprocessing.headers import FileHeader
from ..preprocessing.limits import DEFAULT_LIMITS, InputLimits
from ..preprocessing.prepare import prepare_series
from ..preprocessing.reasons import Rejected
from ..preprocessing.transform import Prepared

if TYPE_CHECKING:
    from ..export.runtimes import Predict


@dataclass(frozen=True)
class Prediction:
    series: str  # folder of the series relative to the input, identifying parts hashed
    series_key: str  # keyed hash of the series, as in the records (under the same key)
    label: str | None
    probabilities: dict[str, float]
    rejected: str | None = None  # reason code when the series (or, series_key "", a file) could not be read
    message: str = ""  # what was expected and found, for a rejected series
    frame_importance: tuple[float, ...] = field(default=(), repr=False)  # --explain: one per valid frame
    # --explain: Grad-CAM of the predicted class, (T, [D,] H, W) in [0, 1], and the frames it
    # is of (the model's input), for the overlays; None for a model without explain_frames.
    attribution: np.ndarray | None = field(default=None, repr=False, compare=False)
    frames: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        if self.rejected:
            return {"series": self.series, "series_key": self.series_key, "rejected": self.rejected,
                    "message": self.message}
        out: dict[str, object] = {"series": self.series, "series_key": self.series_key, "label": self.label,
                                  "probabilities": self.probabilities}
        if self.frame_importance:
            out["frame_importance"] = list(self.frame_importance)
        return out


@dataclass(frozen=True)
class PreparedSeries:
    where: str
    series_key: str
    item: Prepared | Rejected


def read_series(root: Path, limits: InputLimits = DEFAULT_LIMITS,
                ) -> tuple[dict[str, list[FileHeader]], list[tuple[str, Rejected]]]:
    """Headers of every file under `root` (any nesting), grouped by series key, and the
    files that could not be read, with why: ingest's discovery and rules (steps.py)."""
    groups: dict[str, list[FileHeader]] = defaultdict(list)
    rejected = []
    resolved_root = real_root(str(root))
    for path in sorted(input_files(str(root))):
        header = read_file_header(path, resolved_root, limits)
        if isinstance(header, Rejected):
            rejected.append((path, header))
        else:
            groups[header.series_key_source].append(header)
    return groups, rejected


def prepare_folder(root: str | Path, config: PreprocessConfig, key: bytes | None = None,
                   phi: PixelPhiConfig = SAFE_PIXEL_PHI, limits: InputLimits = DEFAULT_LIMITS) -> list[PreparedSeries]:
    """Every series under `root` through the shared preprocessing (ingest's rules and
    `limits`), in folder order, after the files that are no part of a series
    (series_key "", item: why).

    Series are named by their folder relative to `root`, with any part that may carry
    an identifier replaced by a keyed hash (MEDSEQ_HASH_KEY, else a per-run random key)
    under one rule for the whole folder, as ingest names them in rejected.jsonl.
    """
    key = key or deid.key_from_environment() or secrets.token_bytes(32)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"input not found: {root} (expected a folder of DICOM files)")
    groups, unread = read_series(root, limits)
    tokens = deid.identifier_tokens(*{v for headers in groups.values() for h in headers for v in h.identifiers},
                                    *{v for _, exc in unread for v in exc.identifiers})
    name = lambda path: deid.safe_path(deid.relative(path, str(root)), key, tokens)  # noqa: E731
    out = [PreparedSeries(name(path), "", exc) for path, exc in unread]  # no part of any series: ingest's dead letters
    for source, headers in sorted(groups.items(), key=lambda item: min(h.path for h in item[1])):
        paths = sorted(h.path for h in headers)
        where = name(os.path.commonpath(paths) if len(paths) > 1 else paths[0]) or "."
        parts: list[tuple[OrderedSeries, Prepared]] = []
        failed: Rejected | None = None
        try:
            parts = prepare_series(headers, storage.open_binary, config, limits, phi=phi)
        except Rejected as exc:
            failed = exc
        except Exception as exc:  # noqa: BLE001 - one series must not hide the others
            failed = Rejected(reasons.PROCESSING_ERROR, f"unexpected {type(exc).__name__} while preparing the series")
        if failed is not None:
            out.append(PreparedSeries(where, deid.keyed_hash(key, "series", source), failed))
        for ordered, prepared in parts:  # one per slice position of a 4-D series, as ingest's records
            label = where if ordered.position is None else f"{where}#position{ordered.position}"
            out.append(PreparedSeries(label, deid.keyed_hash(key, "series", deid.record_source(source,
                                                                                             ordered.position)),
                                      prepared))
    return out


def frame_importance(run: Predict, prepared: Prepared, target: int) -> tuple[float, ...]:
    """Temporal occlusion: each valid frame is taken out of the sequence in turn (the
    later ones move up, the mask shrinks by one); its importance is how much the
    probability of `target` drops without it. `run`: frames, valid_frames -> probabilities."""
    frames, valid = prepared.frames, prepared.valid_frames
    if valid < 2:
        return (0.0,) * valid
    occluded = np.stack([np.concatenate([np.delete(frames[:valid], t, axis=0), frames[valid - 1:]], axis=0)
                         for t in range(valid)])
    p_full = float(run(frames[None], np.array([valid], np.int32))[0, target])
    without = run(occluded, np.full(valid, valid - 1, np.int32))
    return tuple(float(p_full - p) for p in without[:, target])


def predict(model_dir: str | Path, root: str | Path, explain: bool = False) -> list[Prediction]:
    """Predictions for every series under `root`, in folder order, by a SavedModel or by a
    LiteRT or ONNX artifact of `medseq export` (no Grad-CAM there: it needs gradients)."""
    import tensorflow as tf

    from ..export import runtimes
    from ..train.export import load_spec

    spec = load_spec(model_dir)
    config = from_dict(PreprocessConfig, spec.preprocess, "model preprocess")
    # The model's own ingest.pixel_phi (a model from before it: the safe defaults).
    phi = from_dict(PixelPhiConfig, spec.pixel_phi.get("policy", {}), "model pixel_phi")
    limits = InputLimits.from_record(spec.input_limits)  # the model's own ingest bounds
    spatial = None
    if runtimes.artifact_format(model_dir):
        run = runtimes.load(model_dir)
    else:
        signatures = tf.saved_model.load(str(model_dir)).signatures
        run = runtimes.signature(signatures[F.FRAMES_SIGNATURE])
        spatial = signatures.get(F.EXPLAIN_SIGNATURE) if explain else None  # absent in models before it
    results = []
    for series in prepare_folder(root, config, phi=phi, limits=limits):
        item = series.item
        if isinstance(item, Rejected):
            results.append(Prediction(series.where, series.series_key, None, {}, item.code, item.message))
            continue
        probs = run(item.frames[None], np.array([item.valid_frames], np.int32))[0]
        target = int(np.argmax(probs))
        importance = frame_importance(run, item, target) if explain else ()
        attribution = None
        if spatial is not None:
            attribution = spatial(frames=tf.constant(item.frames[None]),
                                  valid_frames=tf.constant([item.valid_frames]))[F.ATTRIBUTION].numpy()[0]
        results.append(Prediction(series.where, series.series_key, spec.classes[target],
                                  {c: float(p) for c, p in zip(spec.classes, probs, strict=True)},
                                  frame_importance=importance, attribution=attribution,
                                  frames=item.frames if attribution is not None else None))
    return results
