"""The step model of a causal per-frame model: one frame and the state the frames before
it left -> that frame's score and the state after it (`predict_step`).

A live clip is read frame by frame at one frame's work per frame, where rerunning the
sequence model on the last T frames costs T times that. The state is explicit tensors,
because TF Serving keeps none between requests (tensorflow/serving#724: pass it with each
request) and LiteRT converts only stateless LSTMs:

- `state_previous_frame`: the last frame in [0, 1] (the frame difference reads it);
- `state_frames_seen`: how many frames came before (0: none; the first frame's
  difference is zero and it starts the running statistics);
- `state_first`, `state_sum`, `state_sum_squares`: the running standardization's first
  frame features and its sums of (features - first) and their squares;
- `state_lstm_<i>_h`, `state_lstm_<i>_c`: each LSTM layer's output and cell state.

The initial state is all zeros (`initial_state` gives it for a batch). The step model
reuses the sequence model's own layers (its weights), so it is exported by the same
Keras export and converted by the same converters; at every frame t it gives the sequence
model's score at t (export's and push's step parity gate holds it to the fp32 tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from ..io.examples import RecordSpec
from .network import FEATURE_MAPS, FRAME_HEAD, RunningStandardization

STATE = "state_"
FRAME = "frame"  # predict_step's input: one frame of each stream, (B, *frame shape)
FRAME_VALUE = "frame_value"  # predict_step's output: that frame's score, (B,)
FRAMES_SEEN = "frames_seen"


@dataclass(frozen=True)
class StateTensor:
    name: str  # without the `state_` prefix
    shape: tuple[int, ...]  # without the batch axis
    meaning: str

    @property
    def key(self) -> str:
        return STATE + self.name

    def to_json(self) -> dict[str, object]:
        return {"shape": [-1, *self.shape], "dtype": "float32", "meaning": self.meaning}


def _layer(model: keras.Model, name: str) -> keras.Layer | None:
    return next((layer for layer in model.layers if layer.name == name), None)


def _lstms(model: keras.Model) -> list[keras.layers.LSTM]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]


def causal_reason(model: keras.Model) -> str | None:
    """None for a model whose answer at frame t reads frames <= t only (a per-frame head
    over unidirectional LSTMs, with running or no standardization); else why it cannot
    stream, in a few words."""
    names = {layer.name for layer in model.layers}
    if FRAME_HEAD not in names:
        return "it answers once per series, not per frame (train.target: frames)"
    if any(isinstance(layer, keras.layers.Bidirectional) for layer in model.layers) or not _lstms(model):
        return "its sequence model reads later frames (train.causal: a unidirectional lstm)"
    norm = _layer(model, "sequence_standardization")
    if norm is not None and not isinstance(norm, RunningStandardization):
        return "it standardizes each frame by the whole series (train.causal: running statistics)"
    return None


def state_tensors(model: keras.Model, spec: RecordSpec) -> tuple[StateTensor, ...]:
    """The state `predict_step` takes and returns, in its order."""
    frame_shape = tuple(spec.shape[1:])
    out = [StateTensor(FRAMES_SEEN, (1,), "frames read so far (0 at the start)")]
    if _layer(model, "frame_difference") is not None:
        out.append(StateTensor("previous_frame", frame_shape, "the last frame, in [0, 1]"))
    if _layer(model, "sequence_standardization") is not None:
        width = int(model.get_layer("frame_features").output.shape[-1])
        out += [StateTensor("first", (width,), "the first frame's features"),
                StateTensor("sum", (width,), "sum of (features - first) over the frames so far"),
                StateTensor("sum_squares", (width,), "sum of (features - first)^2 over the frames so far")]
    for i, lstm in enumerate(_lstms(model)):
        out += [StateTensor(f"lstm_{i}_h", (lstm.units,), f"LSTM layer {i}'s output after the last frame"),
                StateTensor(f"lstm_{i}_c", (lstm.units,), f"LSTM layer {i}'s cell state after the last frame")]
    return tuple(out)


def states_of(card: dict[str, object]) -> tuple[StateTensor, ...]:
    """The state tensors a model's `step` card (medseq_spec.json) lists, in its order."""
    listed: dict[str, dict[str, object]] = card["state"]  # type: ignore[assignment]
    return tuple(StateTensor(k[len(STATE):], tuple(v["shape"][1:]), str(v.get("meaning", "")))  # type: ignore[index]
                 for k, v in listed.items())


def zero_state(states: tuple[StateTensor, ...], batch: int) -> dict[str, np.ndarray]:
    return {s.key: np.zeros((batch, *s.shape), np.float32) for s in states}


class StepModel(keras.Model):
    """{frame, state_*} -> {frame_value, state_*}: a causal sequence model one frame at a
    time, on the sequence model's own layers (so its own weights)."""

    def __init__(self, model: keras.Model, spec: RecordSpec) -> None:
        why = causal_reason(model)
        if why is not None:
            raise ValueError(why)
        super().__init__(name="medseq_step")
        self.states = state_tensors(model, spec)
        self.frame_rank = len(spec.shape) - 1
        self.to_unit_range = model.get_layer("to_unit_range")
        self.difference = _layer(model, "frame_difference") is not None
        self.encoder = model.get_layer(FEATURE_MAPS).layer  # the TimeDistributed's own per-frame model
        self.pooling = model.get_layer("frame_features").layer
        self.context = _layer(model, "sequence_context")
        self.cells = [lstm.cell for lstm in _lstms(model)]
        self.head = model.get_layer(FRAME_HEAD)

    def call(self, inputs: dict[str, keras.KerasTensor]) -> dict[str, keras.KerasTensor]:
        seen = inputs[STATE + FRAMES_SEEN]
        started = ops.greater(seen, 0.0)  # (B, 1)
        out = {STATE + FRAMES_SEEN: seen + 1.0}
        x = self.to_unit_range(ops.cast(inputs[FRAME], "float32"))
        if self.difference:  # network.FrameDifference of one frame: zero for the first
            before = ops.where(ops.reshape(started, (-1, *[1] * self.frame_rank)), inputs[STATE + "previous_frame"], x)
            out[STATE + "previous_frame"] = x
            x = ops.concatenate([x, x - before], axis=-1)
        x = self.pooling(self.encoder(x))
        if self.context is not None:  # network.RunningStandardization, one step
            features = ops.cast(x, "float32")
            first = ops.where(started, inputs[STATE + "first"], features)
            shifted = features - first
            total = inputs[STATE + "sum"] + shifted
            squares = inputs[STATE + "sum_squares"] + ops.square(shifted)
            count = seen + 1.0
            mean = total / count
            var = ops.maximum(squares / count - ops.square(mean), 0.0)
            z = (shifted - mean) * ops.rsqrt(var + 1e-6)
            context = self.context(ops.concatenate([mean + first, 0.5 * ops.log(var + 1e-6)], axis=-1))
            out.update({STATE + "first": first, STATE + "sum": total, STATE + "sum_squares": squares})
            x = ops.concatenate([z, context], axis=-1)
        for i, cell in enumerate(self.cells):
            dtype = cell.compute_dtype
            h, c = (ops.cast(inputs[f"{STATE}lstm_{i}_{part}"], dtype) for part in "hc")
            x, (h, c) = cell(ops.cast(x, dtype), [h, c], training=False)
            out.update({f"{STATE}lstm_{i}_h": ops.cast(h, "float32"), f"{STATE}lstm_{i}_c": ops.cast(c, "float32")})
        return {FRAME_VALUE: ops.cast(ops.reshape(self.head(x), (-1,)), "float32"), **out}


def step_through(step: keras.Model | object, frames: np.ndarray, valid: np.ndarray,
                 states: tuple[StateTensor, ...]) -> np.ndarray:
    """(B, T, ...) frames -> (B, T) scores by stepping `step` (a callable of the step's
    inputs dict -> outputs dict of numpy arrays) frame by frame; 0 beyond `valid`, as
    the sequence model answers padding."""
    state = zero_state(states, len(frames))
    scores = np.zeros(frames.shape[:2], np.float64)
    for t in range(frames.shape[1]):
        out = step({FRAME: frames[:, t], **state})  # type: ignore[operator]
        scores[:, t] = np.asarray(out[FRAME_VALUE], np.float64).reshape(-1)
        state = {s.key: np.asarray(out[s.key], np.float32) for s in states}
    return scores * (np.arange(frames.shape[1])[None] < np.asarray(valid)[:, None])


__all__ = ["FRAME", "FRAME_VALUE", "STATE", "StateTensor", "StepModel", "causal_reason", "state_tensors",
           "states_of", "step_through", "zero_state"]
