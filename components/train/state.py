"""What a checkpoint holds besides the model and the optimizer, and where it goes.

`TrainState` is the loop's position (global step, evaluated epochs), the best eval
value so far, and the running sums of the current epoch's train metrics. Together with
the model (its weights, BatchNorm statistics and dropout seed states), the optimizer
(slots, iteration count, loss scale) and the stateless input stream (dataset.py), a job
restarted from any checkpoint computes exactly what the killed job would have.

TensorFlow writes a checkpoint under a temporary name and then updates the
`checkpoint` index file atomically, so a kill during a save leaves the previous one.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ...pipeline.errors import InputError
from ..model.metrics import BINS

BEST = "best"


class TrainState(tf.Module):
    def __init__(self, classes: int) -> None:
        super().__init__(name="train_state")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.best_value = tf.Variable(math.nan, dtype=tf.float64, trainable=False, name="best_value")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.stopped = tf.Variable(False, trainable=False, name="stopped_early")
        # Sums over the steps of the current epoch, summed over replicas.
        self.loss_sum = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="loss_sum")
        self.correct = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="correct")
        self.seen = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="seen")
        self.histograms = tf.Variable(tf.zeros((2, classes, BINS)), trainable=False, name="histograms")

    def accumulate(self, loss: tf.Tensor, correct: tf.Tensor, seen: tf.Tensor, histograms: tf.Tensor) -> None:
        self.loss_sum.assign_add(loss)
        self.correct.assign_add(correct)
        self.seen.assign_add(seen)
        self.histograms.assign_add(histograms)
        self.step.assign_add(1)

    def reset_epoch(self) -> None:
        for v in (self.loss_sum, self.correct, self.seen):
            v.assign(0.0)
        self.histograms.assign(tf.zeros_like(self.histograms))

    def improved(self, value: float, mode: str) -> bool:
        best = float(self.best_value.numpy())
        if not math.isfinite(value):
            return False
        return math.isnan(best) or (value > best if mode == "max" else value < best)


def random_states(model: keras.Model) -> list[tf.Variable]:
    """The states of the model's SeedGenerators (dropout masks): `model.variables` holds
    them, `model.weights` does not, and TensorFlow's object graph does not reach them."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class Checkpoints:
    """The loop's checkpoints (`ckpt-<step>`) and the best model (`best/ckpt-<epoch>`)."""

    def __init__(self, directory: Path, state: TrainState, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 keep: int = 3) -> None:
        self.directory = directory
        self.full = tf.train.Checkpoint(state=state, model=model, optimizer=optimizer, rng=random_states(model))
        self.manager = tf.train.CheckpointManager(self.full, str(directory), max_to_keep=keep)
        self.best = tf.train.Checkpoint(model=model)
        self.best_manager = tf.train.CheckpointManager(self.best, str(directory / BEST), max_to_keep=1)

    def available_steps(self) -> list[int]:
        return sorted(int(path.rsplit("-", 1)[1]) for path in self.manager.checkpoints)

    def restore(self, step: int) -> str:
        """Restores the checkpoint of `step`; returns its path."""
        paths = {int(p.rsplit("-", 1)[1]): p for p in self.manager.checkpoints}
        if step not in paths:
            raise InputError(f"{self.directory}: expected the checkpoint of step {step} (the other workers "
                             f"resume there), found steps {sorted(paths)}")
        self.full.restore(paths[step]).assert_existing_objects_matched()
        return paths[step]

    def save(self, step: int) -> None:
        self.manager.save(checkpoint_number=step)

    def save_best(self, epoch: int) -> None:
        self.best_manager.save(checkpoint_number=epoch)

    def restore_best(self) -> bool:
        """Puts the best epoch's weights into the model; False when there is none."""
        if not self.best_manager.latest_checkpoint:
            return False
        self.best.restore(self.best_manager.latest_checkpoint).assert_existing_objects_matched()
        return True


def agreed_step(strategy: tf.distribute.Strategy, available: list[int], workers: int) -> int | None:
    """The newest checkpoint step every worker holds (workers save one after another,
    so a kill may leave them one save apart); None when some worker has none."""
    latest = available[-1] if available else -1
    if workers > 1:
        per_replica = strategy.run(lambda: tf.constant([latest], tf.int64))
        latest = int(np.min(strategy.gather(per_replica, axis=0).numpy()))
    return latest if latest >= 0 else None
