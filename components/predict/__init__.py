"""`medseq predict`: a raw DICOM folder -> class probabilities per series.

It runs the very preprocessing ingest ran (the config travels inside the SavedModel,
assets.extra/medseq_spec.json) and calls the model's `predict_frames` signature.
"""

from __future__ import annotations

import os
import secrets
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseq.components.ingest import deid
from medseq.components.preprocessing import reasons
from medseq.components.preprocessing.headers import FileHeader, read_header
from medseq.components.preprocessing.prepare import prepare_series
from medseq.components.preprocessing.reasons import Rejected
from medseq.components.preprocessing.transform import Prepared
from medseq.pipeline import features as F
from medseq.pipeline.config import PreprocessConfig, from_dict
from medseq.pipeline.errors import InputError


@dataclass(frozen=True)
class Prediction:
    series: str  # folder of the series, relative to the input
    label: str | None
    probabilities: dict[str, float]
    rejected: str | None = None  # reason code when the series could not be read


def read_series(root: Path) -> tuple[dict[str, list[FileHeader]], list[tuple[str, Rejected]]]:
    """Headers of every file under `root`, grouped by series key."""
    groups: dict[str, list[FileHeader]] = defaultdict(list)
    rejected = []
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = str(Path(folder) / name)
            try:
                with open(path, "rb") as f:
                    header = read_header(f, path)
            except Rejected as exc:
                rejected.append((path, exc))
                continue
            groups[header.series_key_source].append(header)
    return groups, rejected


def prepare_folder(root: str | Path, config: PreprocessConfig,
                   key: bytes | None = None) -> list[tuple[str, Prepared | Rejected]]:
    """Every series under `root` through the shared preprocessing, in folder order.

    Series are named by their folder relative to `root`, with any part that may carry
    an identifier replaced by a keyed hash (MEDSEQ_HASH_KEY, else a per-run random key).
    """
    key = key or os.environ.get(deid.KEY_ENV, "").encode() or secrets.token_bytes(32)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"input not found: {root} (expected a folder of DICOM files)")
    groups, _ = read_series(root)
    out: list[tuple[str, Prepared | Rejected]] = []
    for headers in sorted(groups.values(), key=lambda hs: min(h.path for h in hs)):
        paths = sorted(h.path for h in headers)
        folder = os.path.commonpath(paths) if len(paths) > 1 else paths[0]
        where = deid.safe_relpath(folder, str(root), key, deid.series_identifiers(headers)) or "."
        try:
            out.append((where, prepare_series(headers, lambda p: open(p, "rb"), config)[1]))
        except Rejected as exc:
            out.append((where, exc))
        except Exception as exc:  # noqa: BLE001 - one series must not hide the others
            out.append((where, Rejected(reasons.PROCESSING_ERROR, f"unexpected {type(exc).__name__}")))
    return out


def predict(model_dir: str | Path, root: str | Path) -> list[Prediction]:
    import tensorflow as tf

    from medseq.components.train.export import load_spec

    spec = load_spec(model_dir)
    config = from_dict(PreprocessConfig, spec.preprocess, "model preprocess")
    signature = tf.saved_model.load(str(model_dir)).signatures[F.FRAMES_SIGNATURE]
    results = []
    for where, item in prepare_folder(root, config):
        if isinstance(item, Rejected):
            results.append(Prediction(where, None, {}, item.code))
            continue
        out = signature(frames=tf.constant(item.frames[None]), valid_frames=tf.constant([item.valid_frames]))
        probs = out[F.PROBABILITIES].numpy()[0]
        results.append(Prediction(where, spec.classes[int(np.argmax(probs))],
                                  {c: float(p) for c, p in zip(spec.classes, probs, strict=True)}))
    return results
