"""The model, its optimizer and the distributed train step; evaluation on a split.

One custom loop (`strategy.run` + GradientTape + the Keras optimizer) serves every
strategy: Keras 3 `fit` fails under MultiWorkerMirroredStrategy (DESIGN.md), the loop
does not. Each step adds its loss, accuracy and AUC histograms to `TrainState`, on the
device, so no step waits for the host.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ...pipeline.config import TrainConfig
from ...pipeline.errors import ConfigError
from ..io.examples import RecordSpec
from ..model import events
from ..model.intervals import value_metrics
from ..model.metrics import auc, binary_auc, histograms
from ..model.network import ANOMALY_ERROR, ANOMALY_SCORE, build_model
from ..model.tta import averaged, tta_table
from .state import TrainState


def make_strategy(config: TrainConfig) -> tf.distribute.Strategy:
    if config.strategy == "default":
        return tf.distribute.get_strategy()
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.strategy multi_worker_mirrored: expected a TF_CONFIG cluster in the environment")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def make_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    rate: float | keras.optimizers.schedules.LearningRateSchedule = config.learning_rate
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(total_steps, 1))
    optimizer: keras.optimizers.Optimizer = keras.optimizers.Adam(rate, use_ema=config.ema > 0,
                                                                  ema_momentum=config.ema or 0.99)
    if config.mixed_precision == "mixed_float16":  # bfloat16 has float32's range: no loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def use_xla(config: TrainConfig) -> bool:
    """XLA for the forward and backward pass, unless the LSTM runs on cuDNN (a GPU),
    whose fused kernel XLA cannot compile (Keras turns jit_compile="auto" off then too)."""
    if config.jit_compile and tf.config.list_physical_devices("GPU"):
        print("train: jit_compile is off: the LSTM runs on the fused cuDNN kernel, which XLA cannot compile",
              flush=True)
        return False
    return config.jit_compile


class Trainer:
    def __init__(self, spec: RecordSpec, config: TrainConfig, strategy: tf.distribute.Strategy,
                 class_weights: np.ndarray, total_steps: int) -> None:
        self.spec, self.config, self.strategy = spec, config, strategy
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.model = build_model(spec, config)
            self.optimizer = make_optimizer(config, total_steps)
            self.optimizer.build(self.model.trainable_variables)
        self.state = TrainState(len(spec.classes))
        self.class_weights = tf.constant(class_weights, tf.float32)
        self.value, self.frames, self.anomaly = spec.is_value, spec.is_frames, spec.is_anomaly
        self.tta = tta_table(spec.shape, config)
        self.normal = spec.normal_class if self.anomaly else -1
        # A value's loss is in the train split's standard deviations, whatever its units; a
        # frames target's is on the phase score, over the weighted frames only.
        self.value_std = spec.value_std
        regression = config.frames.loss if self.frames else config.value.loss if self.value else None
        if regression is None:
            self.loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction="none")
        else:
            self.loss_fn = (keras.losses.Huber(delta=1.0, reduction="none") if regression == "huber"
                            else keras.losses.MeanSquaredError(reduction="none"))
        self.global_batch = config.batch_size * strategy.num_replicas_in_sync
        self._gradients = tf.function(self._forward_backward, jit_compile=True) if use_xla(config) \
            else self._forward_backward

    def _losses(self, labels: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        """Per series: a value's loss on the standardized scale, a class's weighted cross-entropy,
        a frames target's loss averaged over its weighted frames (temporal sample weights:
        unlabeled and padded frames carry none); an anomaly model's score itself, on the
        normal class's series only (the others carry none)."""
        if self.anomaly:
            return outputs[:, ANOMALY_ERROR] * tf.cast(tf.equal(labels, self.normal), outputs.dtype)
        if self.frames:
            weights = labels[..., events.WEIGHT]
            per_frame = self.loss_fn(labels[..., events.SCORE, None], outputs[..., None])
            return tf.reduce_sum(per_frame * weights, -1) / tf.maximum(tf.reduce_sum(weights, -1), 1.0)
        if self.value:
            scale = tf.constant(self.value_std, tf.float32)
            return self.loss_fn(tf.expand_dims(labels / scale, -1), tf.expand_dims(outputs / scale, -1))
        return self.loss_fn(labels, outputs) * tf.gather(self.class_weights, labels)

    def _forward_backward(self, inputs: dict[str, tf.Tensor], labels: tf.Tensor) -> tuple[Any, ...]:
        with tf.GradientTape() as tape:
            probs = self.model(inputs, training=True)
            loss = tf.reduce_sum(self._losses(labels, probs)) / self.global_batch
            scaled = self.optimizer.scale_loss(loss)
        return loss, probs, tape.gradient(scaled, self.model.trainable_variables)

    def _replica_step(self, inputs: dict[str, tf.Tensor], labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
        loss, probs, grads = self._gradients(inputs, labels)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        seen = tf.cast(tf.size(labels), tf.float32)
        if self.anomaly:  # `correct` sums the normal series' scores, `seen` counts them
            normal = tf.cast(tf.equal(labels, self.normal), tf.float32)
            return (loss, tf.reduce_sum(probs[:, ANOMALY_SCORE] * normal), tf.reduce_sum(normal),
                    tf.zeros_like(self.state.histograms))
        if self.frames:  # `correct` sums the weighted absolute errors, `seen` the weights: the frame MAE
            weights = labels[..., events.WEIGHT]
            error = tf.reduce_sum(tf.abs(probs - labels[..., events.SCORE]) * weights)
            return loss, error, tf.reduce_sum(weights), tf.zeros_like(self.state.histograms)
        if self.value:  # `correct` sums the absolute errors: their mean is the epoch's train MAE
            return loss, tf.reduce_sum(tf.abs(probs - labels)), seen, tf.zeros_like(self.state.histograms)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), labels), tf.float32))
        return loss, correct, seen, histograms(probs, labels)

    @tf.function
    def train_step(self, batches: Iterator[Any]) -> tf.Tensor:
        inputs, labels = next(batches)
        per_replica = self.strategy.run(self._replica_step, args=(inputs, labels))
        loss, correct, seen, hist = (self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                                     for v in per_replica)
        self.state.accumulate(loss, correct, seen, hist)
        return loss

    @contextlib.contextmanager
    def moving_average(self) -> Iterator[None]:
        """With `train.ema`: the weights' moving average in the model for the block (to
        evaluate, or to save as the best epoch), the trained weights back after it."""
        if not self.config.ema:
            yield
            return
        trained = [v.numpy() for v in self.model.trainable_variables]
        self.optimizer.finalize_variable_values(self.model.trainable_variables)
        try:
            yield
        finally:
            for variable, value in zip(self.model.trainable_variables, trained, strict=True):
                variable.assign(value)

    @tf.function
    def _predict(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return averaged(self.model, inputs, self.tta)  # train.tta: the answer serving gives

    def learning_rate(self) -> float:
        return float(np.asarray(self.optimizer.learning_rate))

    def evaluate(self, dataset: tf.data.Dataset) -> dict[str, float]:
        """Loss (without class weights), accuracy and exact AUC over every record of
        `dataset`; for a value: loss, MAE, RMSE and R²; for frames: loss, the phase score's
        MAE over the weighted frames and the event error in source frames; for an anomaly
        model: the normal series' mean score (the loss) and the score's AUC against the
        other classes."""
        probs, labels = [], []
        for inputs, y in dataset:
            probs.append(self._predict(inputs).numpy())
            labels.append(y.numpy())
        p, y = np.concatenate(probs), np.concatenate(labels)
        if self.anomaly:  # the normal series' score picks the epoch; the AUC against the others is shown only
            normal, score = y == self.normal, p[:, ANOMALY_SCORE]
            loss = float(np.mean(p[normal, ANOMALY_ERROR])) if normal.any() else float("nan")
            error = float(np.mean(score[normal])) if normal.any() else float("nan")
            shown = {"eval_auc": binary_auc(score, ~normal)} if normal.any() and not normal.all() else {}
            return {"eval_loss": loss, "eval_prediction_error": error, **shown}
        if self.frames:
            loss = float(np.mean(self._losses(tf.constant(y, tf.float32), tf.constant(p, tf.float32)).numpy()))
            found = events.frame_metrics(p, y)
            return {"eval_loss": loss, "eval_frame_mae": found["frame_mae"], "eval_event_error": found["event_error"]}
        if self.value:
            loss = float(np.mean(self._losses(tf.constant(y, tf.float32), tf.constant(p, tf.float32)).numpy()))
            errors = value_metrics(p, y)
            return {"eval_loss": loss, "eval_mae": errors["mean_absolute_error"],
                    "eval_rmse": errors["root_mean_squared_error"], "eval_r2": errors["r_squared"]}
        chosen = np.clip(p[np.arange(len(y)), y], 1e-7, 1.0)
        return {"eval_loss": float(-np.mean(np.log(chosen))), "eval_accuracy": float(np.mean(p.argmax(-1) == y)),
                "eval_auc": auc(p, y)}
