"""The runtimes an artifact is checked and served under, behind one call:
frames (B, *shape), valid_frames (B,) -> probabilities (B, K), a value target's values
(B,) or a frames target's scores (B, T), as float64 numpy.

- SavedModel: its `predict_frames` signature (TensorFlow, what TF Serving runs);
- LiteRT: `ai_edge_litert.interpreter.Interpreter`, its signature runner (the default
  CPU delegate, XNNPACK, included);
- ONNX: `onnxruntime.InferenceSession` on the CPU execution provider.

A causal model's step (step.py) runs behind another: {frame, state_*} -> {frame_value,
state_*}, numpy in and out, under the same three runtimes (`Step`).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ...pipeline import features as F
from ...pipeline.errors import InputError

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]
Step = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
STEP_SUFFIX = "_step"  # model_fp32_step.tflite beside model_fp32.tflite
RUNTIMES = {"litert": "ai-edge-litert", "onnx": "onnxruntime"}
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx"}


def runtime_version(fmt: str) -> str:
    package = RUNTIMES[fmt]
    return f"{package} {metadata.version(package)}"


def saved_model(model_dir: str | Path) -> Predict:
    import tensorflow as tf

    return signature(tf.saved_model.load(str(model_dir)).signatures[F.FRAMES_SIGNATURE])


def signature(predict_frames: Any) -> Predict:
    """A SavedModel's `predict_frames` concrete function behind the common call."""
    import tensorflow as tf

    def run(frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = predict_frames(**{F.FRAMES: tf.constant(frames), F.VALID_FRAMES: tf.constant(valid, tf.int32)})
        answer = next(name for name in (F.PROBABILITIES, F.VALUE, F.FRAME_VALUES, F.ANOMALY_SCORE) if name in out)
        return np.asarray(out[answer].numpy(), np.float64)

    return run


def litert(data: bytes, threads: int | None = None) -> Predict:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=data, num_threads=threads).get_signature_runner()

    def run(frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = runner(**{F.FRAMES: frames, F.VALID_FRAMES: np.asarray(valid, np.int32)})
        return np.asarray(next(iter(out.values())), np.float64)  # the one output

    return run


def _onnx_session(data: bytes, threads: int | None) -> Any:
    """An ONNX Runtime CPU session of a model's bytes, logging errors only."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def onnx(data: bytes, threads: int | None = None) -> Predict:
    session = _onnx_session(data, threads)

    def run(frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = session.run(None, {F.FRAMES: frames, F.VALID_FRAMES: np.asarray(valid, np.int32)})  # the one output
        return np.asarray(out[0], np.float64)

    return run


def of_bytes(fmt: str, data: bytes) -> Predict:
    return litert(data) if fmt == "litert" else onnx(data)


def artifact_format(path: str | Path) -> str | None:
    """"litert" or "onnx" for a file of that kind, None for anything else (a SavedModel folder)."""
    by_suffix = {suffix: fmt for fmt, suffix in SUFFIXES.items()}
    return by_suffix.get(Path(path).suffix) if Path(path).is_file() else None


def load(path: str | Path) -> Predict:
    """A SavedModel folder, a .tflite or an .onnx file."""
    fmt = artifact_format(path)
    if fmt is None:
        if not (Path(path) / "saved_model.pb").exists():
            raise InputError(f"{path}: expected a SavedModel folder, a .tflite or an .onnx file, found neither")
        return saved_model(path)
    try:
        return of_bytes(fmt, Path(path).read_bytes())
    except ImportError:
        raise InputError(f"{path}: running a {fmt} artifact needs {RUNTIMES[fmt]}: "
                         "pip install 'medseq[edge]'") from None


def saved_model_step(predict_step: Any) -> Step:
    """A SavedModel's `predict_step` concrete function behind the common step call."""
    import tensorflow as tf

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in predict_step(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    return run


def litert_step(data: bytes, threads: int | None = None) -> Step:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=data, num_threads=threads).get_signature_runner()
    return lambda inputs: runner(**inputs)


def onnx_step(data: bytes, threads: int | None = None) -> Step:
    session = _onnx_session(data, threads)
    names = [o.name.removeprefix("next_") for o in session.get_outputs()]  # convert.NEXT: next_state_* -> state_*
    return lambda inputs: dict(zip(names, session.run(None, inputs), strict=True))


def step_of_bytes(fmt: str, data: bytes, threads: int | None = None) -> Step:
    return litert_step(data, threads) if fmt == "litert" else onnx_step(data, threads)


def load_step(path: str | Path) -> Step:
    """The step of a SavedModel folder (its predict_step), or a step artifact of
    `medseq export` (model_<precision>_step.tflite or .onnx). Raises InputError for
    anything else."""
    fmt = artifact_format(path)
    if fmt is None:
        if not (Path(path) / "saved_model.pb").exists():
            raise InputError(f"{path}: expected a SavedModel folder or a step artifact (_step.tflite or "
                             "_step.onnx), found neither")
        import tensorflow as tf

        signatures = tf.saved_model.load(str(path)).signatures
        if F.STEP_SIGNATURE not in signatures:
            raise InputError(f"{path}: the SavedModel has no {F.STEP_SIGNATURE} signature (exported before "
                             "medseq streamed, or not causal)")
        return saved_model_step(signatures[F.STEP_SIGNATURE])
    if not Path(path).stem.endswith(STEP_SUFFIX):
        raise InputError(f"{path}: a whole-series artifact; expected its step artifact "
                         f"({Path(path).stem}{STEP_SUFFIX}{Path(path).suffix}) to stream")
    try:
        return step_of_bytes(fmt, Path(path).read_bytes())
    except ImportError:
        raise InputError(f"{path}: running a {fmt} artifact needs {RUNTIMES[fmt]}: "
                         "pip install 'medseq[edge]'") from None
