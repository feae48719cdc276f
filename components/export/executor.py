"""`medseq export`: LiteRT and ONNX artifacts of a medseq SavedModel, each written only
after its parity gate passed, with a model-card entry per artifact.

OUT/model_<precision>.tflite|.onnx   the artifacts (predict_frames: frames, valid_frames
                                     -> probabilities; any batch)
OUT/medseq_spec.json                 the model's input spec and preprocessing: what
                                     `medseq predict --model OUT/model_fp32.onnx` reads
OUT/medseq_export.json               the entries (and the refusals, with their reasons)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...pipeline import features as F
from ...pipeline.config import ExportConfig
from ...pipeline.errors import InputError
from ...pipeline.fingerprints import tree_fingerprint
from ..io.examples import SPEC_FILE, RecordSpec, load_spec_json, synthetic_frames
from ..model import runtimes
from . import convert, parity

EXPORT_FILE = "medseq_export.json"
LATENCY_BATCHES = (1, 8)
LATENCY_CALLS = 30


@dataclass(frozen=True)
class ExportOutputs:
    out: str
    artifacts: tuple[dict[str, Any], ...]  # the model-card entry of each written artifact
    refused: tuple[dict[str, object], ...]  # format, precision, reason of each one not written


def model_folder(path: str | Path) -> Path:
    """A SavedModel folder, or a `medseq train` output holding one in model/."""
    path = Path(path)
    if not (path / "saved_model.pb").exists() and (path / "model" / "saved_model.pb").exists():
        return path / "model"
    if not (path / "saved_model.pb").exists():
        raise InputError(f"{path}: expected a `medseq train` output folder or a SavedModel, found neither")
    return path


def latency(run: runtimes.Predict, spec: RecordSpec) -> dict[str, dict[str, float]]:
    """p50 and p99 in ms of one call on synthetic frames, per batch size."""
    out = {}
    for batch in LATENCY_BATCHES:
        frames, valid = synthetic_frames(spec, batch), np.full(batch, spec.frames, np.int32)
        run(frames, valid)  # the first call allocates
        times = []
        for _ in range(LATENCY_CALLS):
            start = time.perf_counter()
            run(frames, valid)
            times.append((time.perf_counter() - start) * 1e3)
        out[f"batch_{batch}"] = {"p50_ms": round(float(np.percentile(times, 50)), 3),
                                 "p99_ms": round(float(np.percentile(times, 99)), 3)}
    return out


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _entry(name: str, fmt: str, precision: str, converted: convert.Converted, spec: RecordSpec, source: str,
           gate: parity.Parity, speed: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"file": name, "format": fmt, "precision": precision, "bytes": len(converted.data),
            "sha256": hashlib.sha256(converted.data).hexdigest(), "source_saved_model": source,
            "converter": converted.converter, "runtime": runtimes.runtime_version(fmt),
            "op_set": converted.op_set, "ops": list(converted.ops),
            "inputs": {"frames": {"shape": [-1, *spec.shape], "dtype": spec.dtype},
                       "valid_frames": {"shape": [-1], "dtype": "int32"}},
            "outputs": ({"value": {"shape": [-1], "dtype": "float32", "units": spec.units}} if spec.is_value else
                        {"probabilities": {"shape": [-1, len(spec.classes)], "dtype": "float32",
                                           "class_names": list(spec.classes)}}),
            "batch": "any (checked at 1 and 8)", "parity": gate.to_json(), "latency": speed,
            # The SavedModel's signatures give `domain_score` (model/domain.py); the artifact does not.
            "domain_score": "not carried: checked by medseq predict's domain rules only"}


def export(model: str | Path, examples_dir: str | Path, out: str | Path, formats: Sequence[tuple[str, str]],
           settings: ExportConfig | None = None, log: bool = True) -> ExportOutputs:
    """Converts the model at `model` to each (format, precision), gates each on the eval
    split of `examples_dir` (the `export` section's gate), writes those that pass into `out`."""
    settings = settings or ExportConfig()
    model_dir = model_folder(model)
    out = Path(out)
    import tensorflow as tf

    spec_json = load_spec_json(model_dir)
    saved_model = tf.saved_model.load(str(model_dir))  # once: the weights to rebuild, the reference to gate on
    keras_model, spec = convert.rebuild(model_dir, saved_model.variables)
    split = parity.eval_split(examples_dir, spec)
    reference = runtimes.signature(saved_model.signatures[F.FRAMES_SIGNATURE])
    function = convert.frozen_function(keras_model, spec)
    source = tree_fingerprint(model_dir)
    artifacts: list[dict[str, object]] = []
    refused: list[dict[str, object]] = []
    for fmt, precision in formats:
        label = f"{fmt} {precision}"
        try:
            converted = (convert.to_litert(function, precision) if fmt == "litert" else
                         convert.to_onnx(function, precision, spec.output))
        except convert.Refused as exc:
            refused.append({"format": fmt, "precision": precision, "reason": str(exc)})
            _say(log, f"export: {label} not written: {exc}")
            continue
        candidate = runtimes.of_bytes(fmt, converted.data)
        gate = parity.check(reference, candidate, split, precision, settings)
        figures = gate.figures()
        if not gate.passed:
            refused.append({"format": fmt, "precision": precision, "reason": "; ".join(gate.failures),
                            "parity": gate.to_json()})
            _say(log, f"export: {label} not written, parity gate failed: {'; '.join(gate.failures)} ({figures})")
            continue
        out.mkdir(parents=True, exist_ok=True)
        name = f"model_{precision}{runtimes.SUFFIXES[fmt]}"
        _write_atomically(out / name, converted.data)
        artifacts.append(_entry(name, fmt, precision, converted, spec, source, gate, latency(candidate, spec)))
        _say(log, f"export: {label} -> {out / name} ({len(converted.data) / 1024:.0f} KiB; {figures})")
    if artifacts or refused:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomically(out / SPEC_FILE, json.dumps(spec_json, indent=2).encode())
        _write_atomically(out / EXPORT_FILE, json.dumps({"source_saved_model": source, "artifacts": artifacts,
                                                         "refused": refused}, indent=2).encode() + b"\n")
    return ExportOutputs(str(out), tuple(artifacts), tuple(refused))


def _say(log: bool, line: str) -> None:
    if log:
        print(line, flush=True)
