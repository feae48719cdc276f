"""The sequence classifier: TimeDistributed frame encoder -> (Bi)LSTM over time -> head.

A frame is an image (2-D encoder) or, for records of volumes, a volume (2.5-D encoder).
The encoder is two TimeDistributed layers, its convolutions (`FEATURE_MAPS`, every
frame's last feature maps) and their pooling, so that an explanation can read the maps.

Padded frames (beyond `valid_frames`) are masked, so the LSTM reads only real frames.
The mask is right-padded and the LSTM has no recurrent dropout, so on a GPU Keras runs
it on the fused cuDNN kernel. Frame features are standardized per sequence before the
LSTM (SequenceStandardization), which lets it read change between frames at once.
Under a mixed precision policy the layers compute in float16/bfloat16 and the softmax
head stays in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers, ops

from ...pipeline import features as F
from ...pipeline.config import TrainConfig
from ...pipeline.errors import ConfigError
from ..io.examples import RecordSpec

# keras.applications backbones (always built with weights=None: nothing is downloaded).
# They expect three channels in [0, 255], like the ImageNet weights a user may load.
# Without their pooling: `backbone` pools their last feature maps itself, where Grad-CAM
# (components/train/attribution.py) reads them.
BACKBONES: dict[str, Callable[..., keras.Model]] = {
    "mobilenet_v3_small": lambda shape: keras.applications.MobileNetV3Small(
        input_shape=shape, include_top=False, weights=None, pooling=None, include_preprocessing=True),
    "efficientnet_b0": lambda shape: keras.applications.EfficientNetB0(
        input_shape=shape, include_top=False, weights=None, pooling=None),
}
# The layer whose output is every frame's last feature maps (B, T, h, w, F), or every
# volume's (B, T, D, h, w, F): what the frame encoder pools, and what Grad-CAM reads.
FEATURE_MAPS = "per_frame_cnn"
FRAME_FEATURES = "frame_features"  # the pooled per-frame features, (B, T, F) (the domain score reads them too)
VALUE_HEAD = "value_head"  # the linear layer of a value target (its output standardized, see `build_model`)
FRAME_HEAD = "frame_head"  # the per-frame linear layer of a frames target: (B, T, units) -> (B, T, 1)
NEXT_FRAME_HEAD = "next_frame_head"  # an anomaly model's: (B, T, units) -> the change to the next coarse frame
COARSE_GRID = 8  # an anomaly model predicts each next frame as 8 x 8 block means
ANOMALY_SCORE, ANOMALY_ERROR = 0, 1  # the columns of an anomaly model's output (NextFrameError)


def head(model: keras.Model) -> keras.layers.Dense:
    """The model's last Dense layer: the class head (softmax), the value head (linear) or
    the per-frame head. Its input is the sequence embedding (model/domain.py), per frame
    for the per-frame head."""
    names = {layer.name for layer in model.layers}
    return model.get_layer(next(n for n in (F.PROBABILITIES, VALUE_HEAD, FRAME_HEAD, NEXT_FRAME_HEAD) if n in names))


def small_cnn(spec: RecordSpec, config: TrainConfig, channels: int) -> tuple[keras.Model, keras.Model]:
    """Conv-ReLU-pool blocks, then global average pooling: (H, W, C) in [0, 1] -> features,
    as (the blocks: frame -> feature maps, the pooling: feature maps -> features).

    No BatchNorm: a batch of 4 series is 4 samples to it (a series' frames are near
    copies), and a model trained on such batch statistics predicted one class for every
    eval series with the moving statistics (eval AUC 0.96, accuracy at the majority
    share). SequenceStandardization normalizes per sequence instead, the same in
    training and serving, and trains 2x faster than the BatchNorm encoder on 2 cores.
    """
    if spec.depth:
        return volume_encoder(spec, config, channels)
    blocks = _conv_blocks(spec, config, channels, "frame_encoder")
    return blocks, _pooling(blocks.output.shape[1:])


def volume_encoder(spec: RecordSpec, config: TrainConfig, channels: int) -> tuple[keras.Model, keras.Model]:
    """The volume encoder of a sequence of volumes (2.5-D): the 2-D blocks of `small_cnn`,
    shared by every position of the volume, then a learned mix of the positions' features
    in their order along the slice normal: (D, H, W, C) -> (D, h, w, F) maps -> features.
    A wall that barely moves on three slices of eight stays visible as the features of
    those positions.

    Not 3x3x3 convolutions: on 2 CPU cores a Conv3D encoder of the same widths took 6x the
    time per image of the 2-D one (an epoch of cine_sax at 8 x 64 x 64 volumes in over
    10 minutes), while this costs what the per-position records of the same series cost.
    """
    inputs = keras.Input((spec.depth, spec.height, spec.width, channels))
    maps = layers.TimeDistributed(_conv_blocks(spec, config, channels, "image_encoder"),
                                  name="per_position_cnn")(inputs)
    blocks = keras.Model(inputs, maps, name="frame_encoder")
    pooled = keras.Input(maps.shape[1:])
    x = layers.TimeDistributed(_pooling(maps.shape[2:]), name="per_position_features")(pooled)
    x = layers.Flatten(name="positions_in_order")(x)
    x = layers.Dense(2 * config.conv_filters[-1], activation="relu", name="across_positions")(x)
    return blocks, keras.Model(pooled, x, name="frame_pooling")


def _conv_blocks(spec: RecordSpec, config: TrainConfig, channels: int, name: str) -> keras.Model:
    """Conv-ReLU-pool blocks up to the last convolution's output, not pooled: `_pooling`
    pools it (a max over 2 x 2, then the average), so Grad-CAM reads the last convolution
    at twice the resolution of the pooled maps."""
    inputs = keras.Input((spec.height, spec.width, channels))
    x = inputs
    for i, filters in enumerate(config.conv_filters):
        x = layers.MaxPooling2D(2)(x) if i else x
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, x, name=name)


def _pooling(maps_shape: tuple[int | None, ...], max_first: bool = True) -> keras.Model:
    """Feature maps -> features: the last block's 2 x 2 max pooling (small_cnn), then the
    global average."""
    maps = keras.Input(maps_shape)
    x = layers.MaxPooling2D(2)(maps) if max_first else maps
    return keras.Model(maps, layers.GlobalAveragePooling2D()(x), name="frame_pooling")


def backbone(spec: RecordSpec, config: TrainConfig, channels: int) -> tuple[keras.Model, keras.Model]:
    """A keras.applications network as frame encoder, optionally with local weights: its
    last feature maps, then their global average (the network's own `pooling="avg"`).

    Its stem takes three channels in [0, 255]: grey (the mean of the channels) three
    times, or with `frame_difference` grey, difference (centred on mid-grey), grey.
    """
    if spec.depth:
        raise ConfigError(f"train.encoder: {config.encoder} reads 2-D frames; records of volumes "
                          "(preprocess.four_d: volumes) need small_cnn")
    inputs = keras.Input((spec.height, spec.width, channels))
    grey = ops.mean(inputs[..., :spec.channels], axis=-1, keepdims=True)
    middle = grey
    if channels != spec.channels:
        middle = 0.5 + 0.5 * ops.mean(inputs[..., spec.channels:], axis=-1, keepdims=True)
    x = layers.Concatenate()([grey, middle, grey]) * 255.0
    net = BACKBONES[config.encoder]((spec.height, spec.width, 3))
    if config.encoder_weights:
        path = Path(config.encoder_weights)
        if not path.is_file():
            raise ConfigError(f"train.encoder_weights: expected a local weights file for {config.encoder}, "
                              f"found no file at {path}")
        try:
            net.load_weights(str(path))
        except ValueError as exc:
            raise ConfigError(f"train.encoder_weights: {path} does not fit {config.encoder} "
                              f"without its top ({str(exc).splitlines()[0]})") from None
    blocks = keras.Model(inputs, net(x), name="frame_encoder")
    return blocks, _pooling(blocks.output.shape[1:], max_first=False)


class FrameDifference(layers.Layer):
    """Appends to each frame its difference from the previous frame (zero for the first).

    A nodule that shows on three of forty slices, or a wall that moves, is a local
    change between neighbouring frames; the CNN sees it directly instead of having to
    compare pooled features. Measured on synthetic ct_nodule: eval AUC 0.97 with it,
    0.90 without (benchmarks/bench_quality.py).
    """

    def call(self, frames: keras.KerasTensor) -> keras.KerasTensor:
        previous = ops.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        return ops.concatenate([frames, frames - previous], axis=-1)


class SequenceStandardization(layers.Layer):
    """Frame features standardized over the valid frames of their sequence, plus what
    the standardization took out: the sequence's mean and log standard deviation.

    (B, T, F) -> z (B, T, F) and context (B, T, 2F), the context repeated over time.
    Nothing is lost (x = mean + std * z), but how a feature changes between frames (a
    contracting blood pool, a nodule on three slices) reaches the LSTM at a common
    scale, and the statistics are each sequence's own: training and serving compute
    exactly the same thing, whatever the batch. Computed in float32.
    """

    def call(self, features: keras.KerasTensor, mask: keras.KerasTensor) -> tuple[keras.KerasTensor, ...]:
        x = ops.cast(features, "float32")
        weights = ops.expand_dims(ops.cast(mask, "float32"), -1)
        count = ops.maximum(ops.sum(weights, axis=1, keepdims=True), 1.0)
        mean = ops.sum(x * weights, axis=1, keepdims=True) / count
        var = ops.sum(ops.square(x - mean) * weights, axis=1, keepdims=True) / count
        z = (x - mean) * ops.rsqrt(var + 1e-6) * weights
        context = ops.concatenate([mean, 0.5 * ops.log(var + 1e-6)], axis=-1)
        return z, ops.repeat(context, ops.shape(x)[1], axis=1)


class RunningStandardization(layers.Layer):
    """SequenceStandardization from the frames so far: frame t is standardized by the
    mean and spread of frames 0..t (cumulative sums), its context those statistics at t.
    `train.causal`: the answer at frame t never depends on a later frame, so a live clip
    can be read frame by frame. Computed in float32."""

    def call(self, features: keras.KerasTensor, mask: keras.KerasTensor) -> tuple[keras.KerasTensor, ...]:
        x = ops.cast(features, "float32")
        # Sums of x - (the first frame's x): the same statistics, without the cancellation
        # of large sums of squares (a runtime's last bits stay in the last bits).
        first = x[:, :1]
        x = x - first
        weights = ops.expand_dims(ops.cast(mask, "float32"), -1)
        count = ops.maximum(ops.cumsum(weights, axis=1), 1.0)
        mean = ops.cumsum(x * weights, axis=1) / count
        var = ops.maximum(ops.cumsum(ops.square(x) * weights, axis=1) / count - ops.square(mean), 0.0)
        z = (x - mean) * ops.rsqrt(var + 1e-6) * weights
        return z, ops.concatenate([mean + first, 0.5 * ops.log(var + 1e-6)], axis=-1)


class NextFrameError(layers.Layer):
    """An anomaly model's answer: (coarse frames (B, T, P), the predicted change from each
    frame to the next (B, T, P), valid_frames (B,)) -> (B, 2):

    - column SCORE, the anomaly score: the squared error of the predicted next frames over
      the squared change between the frames, summed over the valid pairs; 0 where every
      change was foreseen, about 1 where the prediction is no better than "no change". A
      share of the series' own motion, so a heart that moves little is not normal for
      that alone;
    - column ERROR, the mean squared error per valid pair: the training loss. (Trained on
      the score itself, the model learned to foresee less of normal motion: AUC 0.70
      against 0.93 for the same score of a model trained on the error, on synthetic
      cine of 115 normal series.)

    Computed in float32."""

    def call(self, coarse: keras.KerasTensor, change: keras.KerasTensor, valid: keras.KerasTensor) -> keras.KerasTensor:
        coarse, change = ops.cast(coarse, "float32"), ops.cast(change, "float32")
        steps = coarse.shape[1]
        pairs = ops.cast(ops.less(ops.expand_dims(ops.arange(1, steps, dtype="int32"), 0),
                                  ops.expand_dims(valid, -1)), "float32")  # (B, T-1): frame t+1 is valid
        missed = ops.sum(ops.mean(ops.square(coarse[:, :-1] + change[:, :-1] - coarse[:, 1:]), axis=-1) * pairs, -1)
        moved = ops.sum(ops.mean(ops.square(coarse[:, 1:] - coarse[:, :-1]), axis=-1) * pairs, -1)
        return ops.stack([missed / (moved + 1e-6), missed / ops.maximum(ops.sum(pairs, -1), 1.0)], axis=-1)


def coarse_frames(pixels: keras.KerasTensor, spec: RecordSpec) -> keras.KerasTensor:
    """(B, T, [D,] H, W, C) in [0, 1] -> (B, T, P): each frame as the means of a
    COARSE_GRID x COARSE_GRID grid of blocks (a volume's positions averaged first)."""
    if spec.depth:
        pixels = ops.mean(pixels, axis=2)
    size = (max(spec.height // COARSE_GRID, 1), max(spec.width // COARSE_GRID, 1))
    pooled = layers.TimeDistributed(layers.AveragePooling2D(size), name="coarse_frames")(pixels)
    return ops.reshape(pooled, (-1, spec.frames, pooled.shape[2] * pooled.shape[3] * pooled.shape[4]))


class MaskedMean(layers.Layer):
    """(B, T, F) features and their (B, T) mask -> (B, F), the mean over the valid frames:
    the same whatever the order of the frames (`train.sequence_model: mean_pool`). It
    takes the mask an LSTM's sequence carries and passes none on (one row per series)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.supports_masking = True

    def compute_mask(self, inputs: keras.KerasTensor, mask: keras.KerasTensor | None = None) -> None:
        return None

    def call(self, features: keras.KerasTensor, mask: keras.KerasTensor) -> keras.KerasTensor:
        weights = ops.expand_dims(ops.cast(mask, "float32"), -1)
        total = ops.sum(ops.cast(features, "float32") * weights, axis=1)
        return total / ops.maximum(ops.sum(weights, axis=1), 1.0)


def build_model(spec: RecordSpec, config: TrainConfig) -> keras.Model:
    """frames (B, T, H, W, C), or (B, T, D, H, W, C) for volumes, + valid_frames (B,)
    -> class probabilities (B, K), for a value target the value (B,), for a frames target
    the phase score of every frame (B, T), for an anomaly model its score and its
    prediction error (B, 2: NextFrameError), float32.
    An anomaly model reads the frames causally (a unidirectional LSTM, running
    standardization, the difference from the previous frame): its prediction of frame
    t + 1 sees frames <= t only.

    The value head is linear on a standardized scale, then mapped to the labels' units by
    the train split's mean and standard deviation (a fixed layer): it starts at the
    training mean, as EchoNet-Dynamic's and PanEcho's heads do, and its loss is in
    standard deviations whatever the units."""
    policy = "float32" if config.mixed_precision == "off" else config.mixed_precision
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        return _build(spec, config)
    finally:
        keras.config.set_dtype_policy(previous)


def _build(spec: RecordSpec, config: TrainConfig) -> keras.Model:
    frames = keras.Input(spec.shape, dtype=spec.dtype, name=F.FRAMES)
    valid = keras.Input((), dtype="int32", name=F.VALID_FRAMES)
    scale = 1.0 / 255.0 if spec.dtype == "uint8" else 1.0
    x = pixels = layers.Rescaling(scale, name="to_unit_range")(ops.cast(frames, "float32"))
    channels = spec.channels
    if config.frame_difference:
        x = FrameDifference(name="frame_difference")(x)
        channels *= 2
    blocks, pooling = (small_cnn if config.encoder == "small_cnn" else backbone)(spec, config, channels)
    x = layers.TimeDistributed(blocks, name=FEATURE_MAPS)(x)
    x = layers.TimeDistributed(pooling, name=FRAME_FEATURES)(x)
    # The same features are dropped in every frame of a sequence: dropping them frame by
    # frame would fake the very changes between frames that the LSTM has to read.
    x = layers.Dropout(config.dropout, noise_shape=(None, 1, x.shape[-1]), name="feature_dropout")(x)
    mask = ops.less(ops.expand_dims(ops.arange(spec.frames, dtype="int32"), 0), ops.expand_dims(valid, -1))
    if config.sequence_norm:
        norm = RunningStandardization if config.causal or spec.is_anomaly else SequenceStandardization
        z, context = norm(dtype="float32", name="sequence_standardization")(x, mask)
        context = layers.LayerNormalization(dtype="float32", name="sequence_context")(context)
        x = layers.Concatenate(name="standardized_and_context")([z, context])
    if config.sequence_model == "mean_pool":
        pooled = MaskedMean(dtype="float32", name="mean_over_frames")(x, mask)
        if spec.is_frames:  # each frame beside the mean of all: blind to their order
            pooled = layers.Concatenate(name="frame_and_mean")([
                x, ops.repeat(ops.expand_dims(pooled, 1), spec.frames, axis=1)])
        x = layers.Dense(config.lstm_units, activation="relu", name="pooled_features")(pooled)
        x = layers.Dropout(config.dropout, name="dropout_0")(x)
    for i in range(config.lstm_layers if config.sequence_model == "lstm" else 0):
        last = i == config.lstm_layers - 1 and not (spec.is_frames or spec.is_anomaly)
        lstm = layers.LSTM(config.lstm_units, return_sequences=not last, name=f"lstm_{i}")
        x = (layers.Bidirectional(lstm, name=f"bilstm_{i}") if config.bidirectional else lstm)(x, mask=mask)
        x = layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
    inputs = {F.FRAMES: frames, F.VALID_FRAMES: valid}
    if spec.is_anomaly:  # the change to each next frame, from the frames up to this one
        coarse = coarse_frames(pixels, spec)
        change = layers.Dense(coarse.shape[-1], dtype="float32", kernel_initializer="zeros", name=NEXT_FRAME_HEAD)(x)
        score = NextFrameError(dtype="float32", name="next_frame_error")(coarse, change, valid)
        return keras.Model(inputs, score, name="medseq_cnn_lstm")
    if spec.is_frames:  # a phase score per frame, starting mid-way (0.5) between its events
        score = layers.Dense(1, dtype="float32", kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant(0.5), name=FRAME_HEAD)(x)
        # Padding has no answer: 0 there, whatever a runtime's masked LSTM steps hold.
        score = ops.reshape(score, (-1, spec.frames)) * ops.cast(mask, "float32")
        return keras.Model(inputs, score, name="medseq_cnn_lstm")
    if spec.is_value:
        z = layers.Dense(1, dtype="float32", kernel_initializer="zeros", name=VALUE_HEAD)(x)
        value = layers.Rescaling(spec.value_std, offset=float(spec.value.get("mean", 0.0)),
                                 dtype="float32", name="to_value_units")(z)
        return keras.Model(inputs, ops.reshape(value, (-1,)), name="medseq_cnn_lstm")
    probabilities = layers.Dense(len(spec.classes), activation="softmax", dtype="float32", name=F.PROBABILITIES)(x)
    return keras.Model(inputs, probabilities, name="medseq_cnn_lstm")
