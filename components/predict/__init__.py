"""`medseq predict`: a raw DICOM folder -> class probabilities per series, printed as
an aligned table or JSON lines, with optional per-frame importance (`--explain`)."""

from __future__ import annotations

import json

from .executor import Prediction, predict, prepare_folder, read_series

TOP_FRAMES = 3


def json_lines(results: list[Prediction]) -> str:
    return "\n".join(json.dumps(r.to_json()) for r in results)


def table(results: list[Prediction]) -> str:
    """One aligned row per series: key, predicted class, each class probability; a series
    that could not be read shows its reason instead."""
    classes = next((list(r.probabilities) for r in results if r.probabilities), [])
    head = ["series", "series_key", "predicted", *classes]
    rows = [[r.series, r.series_key[:16], r.label or "-",
             *([f"{r.probabilities[c]:.4f}" for c in classes] if r.probabilities else ["-"] * len(classes)),
             f"rejected {r.rejected}: {r.message}" if r.rejected else ""] for r in results]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, [*widths, 0], strict=False)).rstrip() for row in [head, *rows]]
    return "\n".join(lines)


def explanation(results: list[Prediction]) -> str:
    """Per series: the frames whose removal lowers the predicted class's probability most."""
    lines = []
    for r in results:
        if not r.frame_importance:
            continue
        ranked = sorted(range(len(r.frame_importance)), key=lambda t: -r.frame_importance[t])[:TOP_FRAMES]
        drivers = ", ".join(f"frame {t} ({r.frame_importance[t]:+.3f})" for t in ranked)
        lines.append(f"{r.series}: {r.label} driven most by {drivers}")
    return "\n".join(lines)


__all__ = ["Prediction", "explanation", "json_lines", "predict", "prepare_folder", "read_series", "table"]
