"""The served graphs hold only portable ops, whatever host exported them.

Keras 3 picks an LSTM's kernel when it traces it: on a host that sees a GPU, the fused
cuDNN op `CudnnRNNV3`, which has no CPU kernel (a CPU TF Serving, LiteRT and tf2onnx
cannot run it). The test makes Keras believe a GPU is there, shows that a plain trace
then holds the cuDNN op, and that the exported SavedModel's graphs hold none.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from medseq.components.io.examples import RecordSpec
from medseq.components.model.network import build_model
from medseq.components.model.saved_model import export_saved_model
from medseq.pipeline import features as F
from medseq.pipeline.config import TrainConfig

TINY = TrainConfig(conv_filters=(4,), lstm_units=4)
rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")  # the module, not the function of that name


def _op_types(saved_model_dir) -> set[str]:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    found = set()
    for graph in proto.meta_graphs:
        found.update(node.op for node in graph.graph_def.node)
        for function in graph.graph_def.library.function:
            found.update(node.op for node in function.node_def)
    return found


@pytest.mark.parametrize("bidirectional", [False, True])
def test_an_export_on_a_gpu_host_holds_no_cudnn_op(monkeypatch, tmp_path, bidirectional):
    spec = RecordSpec(4, 16, 16, 1, "uint8", ("a", "b"))
    model = build_model(spec, dataclasses.replace(TINY, bidirectional=bidirectional))
    monkeypatch.setattr(rnn, "_is_gpu_available", lambda: True)  # what Keras asks when it traces

    inputs = (tf.TensorSpec([None, *spec.shape], tf.uint8), tf.TensorSpec([None], tf.int32))
    traced = tf.function(lambda f, v: model({F.FRAMES: f, F.VALID_FRAMES: v}, training=False))
    plain = {op.type for op in traced.get_concrete_function(*inputs).graph.get_operations()}
    assert any(t.startswith("CudnnRNN") for t in plain)  # the risk is real: the check below can fail

    path = export_saved_model(model, spec, tmp_path / "model")
    types = _op_types(path)
    assert not [t for t in types if t.startswith("CudnnRNN")]
    assert "While" in types or "StatelessWhile" in types  # the portable kernel's loop
    assert all(layer.use_cudnn == "auto" for layer in model._flatten_layers()  # training keeps the fused kernel
               if hasattr(layer, "use_cudnn"))

    monkeypatch.undo()
    loaded = tf.saved_model.load(str(path))
    frames = np.random.default_rng(0).integers(0, 255, (2, *spec.shape), dtype=np.uint8)
    valid = np.array([4, 1], np.int32)
    for name in (F.FRAMES_SIGNATURE, F.EXPLAIN_SIGNATURE):  # and it runs here, on a CPU
        out = loaded.signatures[name](frames=tf.constant(frames), valid_frames=tf.constant(valid))
        np.testing.assert_allclose(out[F.PROBABILITIES].numpy(),
                                   model({F.FRAMES: frames, F.VALID_FRAMES: valid}, training=False).numpy(),
                                   atol=1e-5)
