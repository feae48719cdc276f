"""`medseq export`: LiteRT and ONNX artifacts of a medseq SavedModel, each written only
after its parity gate passed, with a model-card entry per artifact.

OUT/model_<precision>.tflite|.onnx   the artifacts (predict_frames: frames, valid_frames
                                     -> probabilities; any batch)
OUT/model_<precision>_step.tflite|.onnx  a causal model's step (frame, state_* ->
                                     frame_value, state_*; model/step.py), gated on
                                     stepping the eval series against the SavedModel
OUT/medseq_spec.json                 the model's input spec and preprocessing: what
                                     `medseq predict --model OUT/model_fp32.onnx` reads
OUT/medseq_export.json               the entries (and the refusals, with their reasons)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...pipeline import features as F
from ...pipeline.config import ExportConfig, TrainConfig, from_dict
from ...pipeline.errors import ConfigError, InputError
from ...pipeline.fingerprints import tree_fingerprint
from ..io.examples import SPEC_FILE, RecordSpec, load_spec_json, synthetic_frames
from ..model import runtimes
from ..model.step import FRAME, causal_reason, state_tensors, states_of, zero_state
from ..model.tta import tta_table
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


def timed(call: Callable[[], object], calls: int = LATENCY_CALLS) -> dict[str, float]:
    """p50 and p99 in ms of `calls` calls of `call`, after one that allocates."""
    call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}


def latency(run: runtimes.Predict, spec: RecordSpec) -> dict[str, dict[str, float]]:
    """p50 and p99 in ms of one call on synthetic frames, per batch size."""
    out = {}
    for batch in LATENCY_BATCHES:
        frames, valid = synthetic_frames(spec, batch), np.full(batch, spec.frames, np.int32)
        out[f"batch_{batch}"] = timed(functools.partial(run, frames, valid))
    return out


def step_latency(run: runtimes.Step, spec: RecordSpec, states: tuple) -> dict[str, float]:
    """p50 and p99 in ms of one step of one stream (batch 1) on synthetic frames, each step
    carrying the state the last one returned."""
    frames = synthetic_frames(spec, 1)[0]
    state, t = zero_state(states, 1), 0

    def step() -> None:
        nonlocal state, t
        out = run({FRAME: frames[t % len(frames)][None], **state})
        state, t = {s.key: out[s.key] for s in states}, t + 1

    return timed(step)


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
                        {F.FRAME_VALUES: {"shape": [-1, spec.frames], "dtype": "float32",
                                          "events": list(spec.classes)}} if spec.is_frames else
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
    if spec_json.get("target") == "anomaly":
        raise ConfigError(f"{model_dir}: an anomaly model (train.target: anomaly) is served as the SavedModel; "
                          "expected a class, value or frames model for LiteRT or ONNX (push.formats: [])")
    saved_model = tf.saved_model.load(str(model_dir))  # once: the weights to rebuild, the reference to gate on
    keras_model, spec = convert.rebuild(model_dir, saved_model.variables)
    split = parity.eval_split(examples_dir, spec)
    reference = runtimes.signature(saved_model.signatures[F.FRAMES_SIGNATURE])
    train = from_dict(TrainConfig, spec_json["training"]["config"], "model train")  # as convert.rebuild reads it
    function = convert.frozen_function(keras_model, spec, tta_table(spec.shape, train))  # answers as the SavedModel
    causal = causal_reason(keras_model) is None
    step_function = convert.frozen_step_function(keras_model, spec) if causal else None
    states = state_tensors(keras_model, spec) if causal else ()
    source = tree_fingerprint(model_dir)
    artifacts: list[dict[str, object]] = []
    refused: list[dict[str, object]] = []
    for fmt, precision in formats:
        label = f"{fmt} {precision}"
        try:
            converted = (convert.to_litert(function, precision) if fmt == "litert" else
                         convert.to_onnx(function, precision, (spec.output,)))
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
        if step_function is not None:
            step = _step_artifact(fmt, precision, step_function, states, reference, split, settings, spec, out, log)
            if "reason" in step:
                refused.append(step)
            else:
                artifacts[-1]["step"] = step
    if artifacts or refused:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomically(out / SPEC_FILE, json.dumps(spec_json, indent=2).encode())
        _write_atomically(out / EXPORT_FILE, json.dumps({"source_saved_model": source, "artifacts": artifacts,
                                                         "refused": refused}, indent=2).encode() + b"\n")
    return ExportOutputs(str(out), tuple(artifacts), tuple(refused))


def _step_artifact(fmt: str, precision: str, function: tuple, states: tuple, reference: runtimes.Predict,
                   split: parity.EvalSplit, settings: ExportConfig, spec: RecordSpec, out: Path,
                   log: bool) -> dict[str, Any]:
    """A causal model's step artifact, written beside its whole-sequence one if stepping
    the eval series gives the SavedModel's scores (parity.check_step): its card entry, or
    its refusal (format, precision, artifact "step", reason)."""
    label = f"{fmt} {precision} step"
    frozen, outputs = function
    try:
        converted = (convert.to_litert(convert.named_outputs(frozen, outputs), precision) if fmt == "litert" else
                     convert.to_onnx(frozen, precision, outputs))
    except convert.Refused as exc:
        _say(log, f"export: {label} not written: {exc}")
        return {"format": fmt, "precision": precision, "artifact": "step", "reason": str(exc)}
    run = runtimes.step_of_bytes(fmt, converted.data)
    gate = parity.check_step(reference, run, states, split, precision, settings)
    if not gate.passed:
        _say(log, f"export: {label} not written, parity gate failed: {'; '.join(gate.failures)}")
        return {"format": fmt, "precision": precision, "artifact": "step", "reason": "; ".join(gate.failures),
                "parity": gate.to_json()}
    name = f"model_{precision}{runtimes.STEP_SUFFIX}{runtimes.SUFFIXES[fmt]}"
    _write_atomically(out / name, converted.data)
    _say(log, f"export: {label} -> {out / name} ({len(converted.data) / 1024:.0f} KiB; {gate.figures()})")
    return {"file": name, "bytes": len(converted.data), "sha256": hashlib.sha256(converted.data).hexdigest(),
            "ops": list(converted.ops), "inputs": {FRAME: {"shape": [-1, *spec.shape[1:]], "dtype": spec.dtype}},
            "state": {s.key: s.to_json() for s in states}, "initial_state": "zeros",
            "parity": gate.to_json(), "latency_per_frame": step_latency(run, spec, states)}


def saved_step_parity(model: str | Path, examples_dir: str | Path | None,
                      settings: ExportConfig | None = None) -> parity.StepParity | None:
    """A SavedModel's own predict_step against its predict_frames (parity.check_step, at
    the fp32 tolerance), on the eval split of `examples_dir`, or without records on 16
    seeded synthetic series; None for a model that does not stream."""
    import tensorflow as tf

    model_dir = model_folder(model)
    step = load_spec_json(model_dir).get("step") or {}
    if not step.get("streams"):
        return None
    from ..io.examples import load_spec

    spec = load_spec(model_dir)
    loaded = tf.saved_model.load(str(model_dir))
    reference = runtimes.signature(loaded.signatures[F.FRAMES_SIGNATURE])
    if examples_dir is not None:
        split = parity.eval_split(examples_dir, spec)
    else:
        frames = synthetic_frames(spec, parity.FEW)
        valid = np.random.default_rng(0).integers(1, spec.frames + 1, parity.FEW).astype(np.int32)
        split = parity.EvalSplit(frames, valid, np.zeros((parity.FEW, spec.frames)))
    states = states_of(step)
    return parity.check_step(reference, runtimes.saved_model_step(loaded.signatures[F.STEP_SIGNATURE]), states,
                             split, "fp32", settings or ExportConfig())


def _say(log: bool, line: str) -> None:
    if log:
        print(line, flush=True)
