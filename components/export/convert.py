"""A medseq SavedModel -> a LiteRT (.tflite) or ONNX (.onnx) file of `predict_frames`.

The served SavedModel cannot be converted as it is: Keras 3's LSTM collects its outputs
in a TensorList inside a while loop, which LiteRT runs only through Select TF (Flex) ops.
The model is therefore rebuilt from its own config (kept in medseq_spec.json), its
weights copied from the SavedModel, and its LSTMs traced unrolled (T is fixed by the
record spec) on the portable kernel; the traced function is frozen (variables become
constants, which dynamic-range and int8 quantization need) and handed to the converter.
Only built-in ops are accepted: LiteRT's TFLITE_BUILTINS, ONNX's default domain.

A causal model's step (model/step.py, `predict_step`: frame + state -> frame_value +
state) is traced and converted the same way, into a second artifact: it holds no loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ...pipeline import features as F
from ...pipeline.config import EXPORT_FORMATS, TrainConfig, from_dict
from ...pipeline.errors import InputError
from ..io.examples import RecordSpec, load_spec, load_spec_json
from ..model.network import build_model
from ..model.saved_model import portable_lstm, step_inputs
from ..model.step import StepModel
from ..model.tta import averaged

ONNX_OPSET = 17
NEXT = "next_"  # an ONNX step's state outputs: next_state_* (its inputs are state_*)


class Refused(Exception):
    """A conversion that cannot give a faithful artifact; the message is one line."""


@dataclass(frozen=True)
class Converted:
    data: bytes
    ops: tuple[str, ...]  # the op types in the artifact
    op_set: str  # "TFLITE_BUILTINS" or "ai.onnx opset 17"
    converter: str  # package and version


def rebuild(model_dir: str | Path, saved: Sequence[tf.Variable]) -> tuple[keras.Model, RecordSpec]:
    """The Keras model of a medseq SavedModel, in float32, with the SavedModel's weights
    (`saved`: the variables of the loaded SavedModel, in its order)."""
    model_dir = Path(model_dir)
    spec_json = load_spec_json(model_dir)
    train_config = spec_json.get("training", {}).get("config")
    if not train_config:
        raise InputError(f"{model_dir}: expected a model exported by `medseq train` (its training config in "
                         "assets.extra/medseq_spec.json), found none")
    spec = load_spec(model_dir)
    config = dataclasses.replace(from_dict(TrainConfig, train_config, "model train"), mixed_precision="off")
    model = build_model(spec, config)
    mine = model.variables
    if len(saved) != len(mine) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(mine, saved, strict=True)):
        raise InputError(f"{model_dir}: its variables do not fit the model its config builds "
                         f"({len(saved)} saved, {len(mine)} built)")
    for variable, value in zip(mine, saved, strict=True):
        variable.assign(tf.cast(value, variable.dtype))
    return model, spec


def frozen_function(model: keras.Model, spec: RecordSpec,
                    tta: np.ndarray | None = None) -> tf.types.experimental.ConcreteFunction:
    """frames (B, *spec.shape), valid_frames (B,) -> probabilities (B, K), unrolled and
    frozen; with `tta` the mean over those symmetries, as the SavedModel answers."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([None, *spec.shape], tf.dtypes.as_dtype(spec.dtype), name=F.FRAMES),
                                  tf.TensorSpec([None], tf.int32, name=F.VALID_FRAMES)])
    def predict_frames(frames: tf.Tensor, valid_frames: tf.Tensor) -> dict[str, tf.Tensor]:
        return {spec.output: averaged(model, {F.FRAMES: frames, F.VALID_FRAMES: valid_frames}, tta)}

    with portable_lstm(model, unroll=True):
        return convert_variables_to_constants_v2(predict_frames.get_concrete_function())


def frozen_step_function(model: keras.Model, spec: RecordSpec) -> tuple[tf.types.experimental.ConcreteFunction,
                                                                        tuple[str, ...]]:
    """frame + state_* -> frame_value + state_* (model/step.py), frozen, and the names of
    its outputs in their order (freezing keeps their order, not their names)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    step = StepModel(model, spec)

    @tf.function(input_signature=[step_inputs(model, spec)])
    def predict_step(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return step(inputs, training=False)

    traced = predict_step.get_concrete_function()
    return convert_variables_to_constants_v2(traced), tuple(sorted(traced.structured_outputs))  # nest's order


def named_outputs(function: tf.types.experimental.ConcreteFunction,
                  outputs: Sequence[str]) -> tf.types.experimental.ConcreteFunction:
    """A frozen function of dict inputs with its outputs named again: LiteRT's signature
    then names them (state_* in, state_* out) instead of output_0, output_1, ..."""
    specs = {t.name.split(":")[0]: tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0])
             for t in function.inputs}

    @tf.function(input_signature=[specs])
    def named(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return dict(zip(outputs, function(**inputs), strict=True))

    return named.get_concrete_function()


def to_litert(function: tf.types.experimental.ConcreteFunction, precision: str) -> Converted:
    """fp32, fp16 (weights stored as float16) or dynamic_int8 (int8 weights; activations
    quantized on the fly in convolutions and fully connected layers, float elsewhere)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        with _quiet_converter():
            data = converter.convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises its own ConverterError and others
        needed = sorted({word.strip(",.") for word in str(exc).split() if word.startswith("tf.")})
        raise Refused("LiteRT: the graph needs ops outside TFLITE_BUILTINS"
                      + (f" ({', '.join(needed[:6])})" if needed else "")
                      + "; Select TF (Flex) and custom ops are not accepted") from None
    from ai_edge_litert.interpreter import Interpreter

    ops = tuple(sorted({op["op_name"] for op in Interpreter(model_content=data)._get_ops_details()}))
    if any(op in ("DELEGATE", "CUSTOM") or op.startswith("Flex") for op in ops):
        raise Refused(f"LiteRT: the converted graph holds non-built-in ops ({', '.join(ops)})")
    return Converted(data, ops, "TFLITE_BUILTINS", f"tensorflow {tf.__version__} (TFLiteConverter)")


def to_onnx(function: tf.types.experimental.ConcreteFunction, precision: str,
            outputs: Sequence[str] = (F.PROBABILITIES,)) -> Converted:
    """fp32 (onnxruntime's dynamic int8 quantization was measured and failed the gate);
    `outputs`: the names of the outputs in order (probabilities, a value head's value, a
    step's frame_value and state); the inputs keep their TensorSpec names."""
    import onnx
    import tf2onnx

    if precision not in EXPORT_FORMATS["onnx"]:
        raise Refused(f"ONNX: precision {precision} is not offered "
                      f"(expected one of {', '.join(EXPORT_FORMATS['onnx'])})")
    inputs, graph_outputs = [t.name for t in function.inputs], [t.name for t in function.outputs]
    with _quiet_converter():
        proto, _ = tf2onnx.convert.from_graph_def(function.graph.as_graph_def(), input_names=inputs,
                                                  output_names=graph_outputs, opset=ONNX_OPSET)
    # The contract's names (frames, valid_frames -> probabilities, or value) instead of the graph's.
    # An output carrying an input on (a step's state) is `next_<name>`: ONNX names a value once.
    given = [name.split(":")[0] for name in inputs]
    names = dict(zip([*inputs, *graph_outputs], [*given, *(NEXT + o if o in given else o for o in outputs)],
                     strict=True))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.name = names.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [names.get(x, x) for x in node.input]
        node.output[:] = [names.get(x, x) for x in node.output]
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    custom = sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise Refused(f"ONNX: the converted graph holds ops outside the default domain ({', '.join(custom)})")
    ops = tuple(sorted({n.op_type for n in proto.graph.node}))
    return Converted(data, ops, f"ai.onnx opset {ONNX_OPSET}", f"tf2onnx {tf2onnx.__version__}")


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """The converters log through absl/logging at INFO and WARNING: not the user's business."""
    import logging

    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow", "tf2onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

