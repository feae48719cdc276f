"""assets.extra/tf_serving_warmup_requests from synthetic input only.

TF Serving replays these PredictionLogs when it loads a version, so the first real
request does not pay for graph set-up. They ship inside every served version, so
they must hold no patient data (TFX's InfraValidator warns the same): the frames are
seeded noise of the model's input shape and dtype, never pixels of a record.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from ...pipeline import features as F
from ..io.examples import RecordSpec, synthetic_frames
from ..io.records import encode_example

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's own limit on warm-up records


def synthetic_example(frames: np.ndarray) -> bytes:
    """A serialized tf.Example of the record contract around `frames` (T, H, W, C)."""
    return encode_example({F.FRAMES: frames.tobytes(), F.FRAMES_SHAPE: list(frames.shape),
                           F.FRAMES_DTYPE: str(frames.dtype).encode(), F.VALID_FRAMES: [frames.shape[0]]})


def step_request(model_name: str, frames: np.ndarray, state: dict[str, np.ndarray]) -> predict_pb2.PredictRequest:
    """A causal model's `predict_step` request: one frame per stream (B, H, W, C) and the
    state the frames before left (model/step.py), as a TF Serving client sends it."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name,
                                                                        signature_name=F.STEP_SIGNATURE))
    request.inputs["frame"].CopyFrom(tf.make_tensor_proto(frames))
    for name, value in state.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value, np.float32)))
    return request


def warmup_requests(spec: RecordSpec, model_name: str, batch_sizes: Sequence[int],
                    step: dict[str, Any] | None = None) -> list[predict_pb2.PredictRequest]:
    """One PredictRequest per signature and batch size; with a streaming model's `step`
    (medseq_spec.json), `predict_step` from the initial (zero) state too."""
    requests = []
    for batch in batch_sizes:
        frames = synthetic_frames(spec, batch, seed=batch)
        by_examples = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=model_name, signature_name=F.SERVING_SIGNATURE))
        by_examples.inputs["examples"].CopyFrom(tf.make_tensor_proto([synthetic_example(f) for f in frames],
                                                                     dtype=tf.string))
        by_frames = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=model_name, signature_name=F.FRAMES_SIGNATURE))
        by_frames.inputs[F.FRAMES].CopyFrom(tf.make_tensor_proto(frames))
        by_frames.inputs[F.VALID_FRAMES].CopyFrom(tf.make_tensor_proto(np.full(batch, spec.frames, np.int32)))
        requests += [by_examples, by_frames]
        if step and step.get("streams"):
            zeros = {name: np.zeros([batch, *t["shape"][1:]], np.float32) for name, t in step["state"].items()}
            requests.append(step_request(model_name, frames[:, 0], zeros))
    return requests[:MAX_RECORDS]


def write_warmup(path: Path, requests: Sequence[predict_pb2.PredictRequest]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read_warmup(path: str | Path) -> list[predict_pb2.PredictRequest]:
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request
            for r in tf.data.TFRecordDataset(str(path))]


def run_request(loaded: object, request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """Runs a PredictRequest through a loaded SavedModel's signature, as TF Serving does."""
    signature = loaded.signatures[request.model_spec.signature_name]  # type: ignore[attr-defined]
    inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
    return {k: v.numpy() for k, v in signature(**inputs).items()}
