"""SavedModel export with the two signatures of the serving contract.

- `serving_default`: serialized tf.Examples (the record contract) -> probabilities,
  class_ids (and `probability` of the positive class for two-class tasks); for a value
  target (train.target: value), `value` in the labels' units; for a frames target,
  `frame_values`, the phase score of every frame (B, T); for an anomaly model
  (train.target: anomaly), `anomaly_score` (B,). TFMA and
  TF Serving's Predict/Classify clients use this one.
- `predict_frames`: preprocessed frames + valid_frames -> the same outputs, for
  clients that run the shared preprocessing themselves (`medseq predict`).
- `explain_frames`: the inputs of `predict_frames` -> its outputs and `attribution`,
  where in each frame the evidence for the predicted class lies (Grad-CAM,
  attribution.py; `medseq predict --explain`).
- `predict_step` and `initial_state`, for a causal model only (train.causal): one frame
  of each stream and the state the frames before it left -> that frame's `frame_value`
  and the next state (step.py); the zero state for `batch_size` streams. Whether the
  model streams, and why not, and its state tensors are in medseq_spec.json's `step`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ...pipeline import features as F
from ..io.examples import SPEC_FILE, RecordSpec, parse_examples
from .attribution import grad_cam
from .domain import embedder
from .network import ANOMALY_SCORE
from .step import FRAME, FRAME_VALUE, StepModel, causal_reason, state_tensors
from .tta import averaged


def _outputs(probabilities: tf.Tensor, spec: RecordSpec) -> dict[str, tf.Tensor]:
    if spec.is_anomaly:  # the score column of the model's (score, prediction error)
        return {spec.output: probabilities[:, ANOMALY_SCORE]}
    if spec.is_value or spec.is_frames:  # the model's output is the value itself, or each frame's score
        return {spec.output: probabilities}
    out = {F.PROBABILITIES: probabilities, F.CLASS_IDS: tf.argmax(probabilities, -1, output_type=tf.int32)}
    if len(spec.classes) == 2:
        out["probability"] = probabilities[:, 1]
    return out


def _domain_score(model: keras.Model, reference: tuple[np.ndarray, np.ndarray]) -> Any:
    """inputs -> the domain score of each series (model/domain.py `scores`, in TensorFlow)."""
    embed = embedder(model)
    mean = tf.constant(reference[0], tf.float32)
    precision = tf.constant(reference[1], tf.float32)

    def score(inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        centred = tf.cast(embed(inputs, training=False), tf.float32) - mean
        squared = tf.reduce_sum(tf.matmul(centred, precision) * centred, axis=-1)
        return tf.sqrt(tf.maximum(squared, 0.0) / float(reference[0].shape[0]))

    return score


def inner_layers(layer: keras.Layer) -> list[keras.Layer]:
    """Every layer inside `layer`, each once, through Keras' public attributes: a model's
    `layers`, a wrapper's `layer` (TimeDistributed) and a Bidirectional's two copies."""
    found: dict[int, keras.Layer] = {}
    pending = [layer]
    while pending:
        current = pending.pop()
        children = [*getattr(current, "layers", ()),
                    *(getattr(current, name, None) for name in ("layer", "forward_layer", "backward_layer"))]
        for child in children:
            if isinstance(child, keras.Layer) and id(child) not in found and child is not layer:
                found[id(child)] = child
                pending.append(child)
    return list(found.values())


@contextlib.contextmanager
def portable_lstm(model: keras.Model, unroll: bool = False) -> Iterator[None]:
    """Every LSTM of `model` traced with its portable kernel while in the block, and
    with `unroll` also unrolled (what LiteRT and ONNX conversion need: no while loop).

    Keras picks an LSTM's kernel when it traces it: on a host that sees a GPU, the fused
    cuDNN op (`CudnnRNNV3`), which has no CPU kernel, so a SavedModel exported there
    could not be served by a CPU TF Serving, nor converted for LiteRT or ONNX. Training
    keeps the fused kernel; the served graphs never hold it, whatever host exported them
    (tests/components/train/test_export.py traces as if on a GPU and scans every graph).
    """
    lstms = [layer for layer in inner_layers(model) if isinstance(layer, keras.layers.LSTM)]
    before = [(layer.use_cudnn, layer.unroll) for layer in lstms]
    for layer in lstms:
        layer.use_cudnn, layer.unroll = False, unroll or layer.unroll
    try:
        yield
    finally:
        for layer, (cudnn, unrolled) in zip(lstms, before, strict=True):
            layer.use_cudnn, layer.unroll = cudnn, unrolled


def step_inputs(model: keras.Model, spec: RecordSpec) -> dict[str, tf.TensorSpec]:
    """predict_step's inputs: one frame of each stream, and the state (step.py)."""
    return {FRAME: tf.TensorSpec([None, *spec.shape[1:]], tf.dtypes.as_dtype(spec.dtype), name=FRAME),
            **{s.key: tf.TensorSpec([None, *s.shape], tf.float32, name=s.key) for s in state_tensors(model, spec)}}


def step_card(model: keras.Model, spec: RecordSpec) -> dict[str, object]:
    """medseq_spec.json's `step`: whether the model streams (and if not, why), its
    signatures and state tensors, what a client passes back with each frame."""
    why = causal_reason(model)
    if why is not None:
        return {"streams": False, "reason": why}
    return {"streams": True, "signature": F.STEP_SIGNATURE, "initial_state": F.INITIAL_STATE_SIGNATURE,
            "inputs": {FRAME: {"shape": [-1, *spec.shape[1:]], "dtype": spec.dtype}},
            "outputs": {FRAME_VALUE: {"shape": [-1], "dtype": "float32"}},
            "state": {s.key: s.to_json() for s in state_tensors(model, spec)},
            "initial": "zeros (every state tensor), or the initial_state signature for batch_size streams",
            "protocol": "each output state_* is the next call's input of the same name"}


def add_step_endpoints(archive: keras.export.ExportArchive, model: keras.Model, spec: RecordSpec) -> dict[str, object]:
    """`predict_step` and `initial_state` for a causal model; returns its step card."""
    card = step_card(model, spec)
    if not card["streams"]:
        return card
    step = StepModel(model, spec)
    states = state_tensors(model, spec)

    def initial_state(batch_size: tf.Tensor) -> dict[str, tf.Tensor]:
        return {s.key: tf.zeros(tf.concat([[batch_size], s.shape], 0), tf.float32) for s in states}

    archive.add_endpoint(F.STEP_SIGNATURE, lambda inputs: step(inputs, training=False),
                         input_signature=[step_inputs(model, spec)])
    archive.add_endpoint(F.INITIAL_STATE_SIGNATURE, initial_state,
                         input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")])
    return card


def export_saved_model(model: keras.Model, spec: RecordSpec, path: str | Path,
                       training: dict[str, object] | None = None,
                       reference: tuple[np.ndarray, np.ndarray] | None = None,
                       tta: np.ndarray | None = None) -> Path:
    """Writes a SavedModel (plus assets.extra/medseq_spec.json: the input spec, the
    preprocessing config and `training`, e.g. the training records' fingerprint) to
    `path`, replacing it. With `reference` (the training embeddings' mean and inverse
    covariance, model/domain.py) `serving_default` and `predict_frames` also return
    `domain_score`. With `tta` (model/tta.py) their answer is the mean over those
    symmetries of the frames."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    archive = keras.export.ExportArchive()
    archive.track(model)

    score = _domain_score(model, reference) if reference is not None else None

    def scored(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = _outputs(averaged(model, inputs, tta), spec)
        if score is not None:
            out[F.DOMAIN_SCORE] = score(inputs)
        return out

    def serve_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = parse_examples(examples, spec)
        return scored({F.FRAMES: parsed[F.FRAMES], F.VALID_FRAMES: parsed[F.VALID_FRAMES]})

    def serve_frames(frames: tf.Tensor, valid_frames: tf.Tensor) -> dict[str, tf.Tensor]:
        return scored({F.FRAMES: frames, F.VALID_FRAMES: valid_frames})

    frames_inputs = [tf.TensorSpec([None, *spec.shape], tf.dtypes.as_dtype(spec.dtype), name=F.FRAMES),
                     tf.TensorSpec([None], tf.int32, name=F.VALID_FRAMES)]
    with portable_lstm(model):
        archive.add_endpoint(F.SERVING_SIGNATURE, serve_examples,
                             input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        archive.add_endpoint(F.FRAMES_SIGNATURE, serve_frames, input_signature=frames_inputs)
        archive.add_endpoint(F.EXPLAIN_SIGNATURE, grad_cam(model), input_signature=frames_inputs)
        step = add_step_endpoints(archive, model, spec)
        archive.write_out(str(tmp), verbose=False)
    extra = tmp / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / SPEC_FILE).write_text(json.dumps({**spec.to_json(), "training": training or {}, "step": step}, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
