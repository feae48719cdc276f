"""The sequence classifier: TimeDistributed CNN per frame -> (Bi)LSTM over time -> head.

Padded frames (beyond `valid_frames`) are masked, so the LSTM reads only real frames.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from medseq.components.train.dataset import RecordSpec
from medseq.pipeline import features as F
from medseq.pipeline.config import TrainConfig


def frame_encoder(spec: RecordSpec, config: TrainConfig) -> keras.Model:
    """A small CNN applied to each frame: (H, W, C) -> feature vector."""
    inputs = keras.Input((spec.height, spec.width, spec.channels))
    x = inputs
    for filters in config.conv_filters:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="frame_encoder")


def build_model(spec: RecordSpec, config: TrainConfig) -> keras.Model:
    frames = keras.Input(spec.shape, dtype=spec.dtype, name=F.FRAMES)
    valid = keras.Input((), dtype="int32", name=F.VALID_FRAMES)
    scale = 1.0 / 255.0 if spec.dtype == "uint8" else 1.0
    x = layers.Rescaling(scale, name="to_unit_range")(ops.cast(frames, "float32"))
    x = layers.TimeDistributed(frame_encoder(spec, config), name="per_frame_cnn")(x)
    mask = ops.less(ops.expand_dims(ops.arange(spec.frames, dtype="int32"), 0), ops.expand_dims(valid, -1))
    lstm = layers.LSTM(config.lstm_units, name="lstm")
    x = (layers.Bidirectional(lstm, name="bilstm") if config.bidirectional else lstm)(x, mask=mask)
    x = layers.Dropout(config.dropout)(x)
    probabilities = layers.Dense(len(spec.classes), activation="softmax", name=F.PROBABILITIES)(x)
    return keras.Model({F.FRAMES: frames, F.VALID_FRAMES: valid}, probabilities, name="medseq_cnn_lstm")
