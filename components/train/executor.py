"""Training under tf.distribute with checkpoints that survive a kill.

One custom loop (`strategy.run` + GradientTape + the Keras optimizer) serves every
strategy: Keras 3 `fit` fails under MultiWorkerMirroredStrategy (DESIGN.md), the loop
does not. A checkpoint is written after every epoch; a restarted job resumes from the
last one and ends with the same number of epochs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from medseq.components.train.dataset import RecordSpec, make_dataset, record_spec, split_count, split_files
from medseq.components.train.export import export_saved_model
from medseq.components.train.model import build_model
from medseq.pipeline.config import TrainConfig
from medseq.pipeline.errors import ConfigError, InputError


@dataclass(frozen=True)
class TrainOutputs:
    model_dir: str
    epochs_run: int
    resumed_from_epoch: int
    history: list[dict[str, float]]


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


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def _workers(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(1, sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")))


def _worker_dir(path: Path, strategy: tf.distribute.Strategy) -> Path:
    """Non-chief workers write checkpoints beside the chief's, never over them."""
    if _is_chief(strategy):
        return path
    resolver = strategy.cluster_resolver
    return path.parent / f"{path.name}.worker-{resolver.task_type}-{resolver.task_id}"


class Trainer:
    def __init__(self, spec: RecordSpec, config: TrainConfig, strategy: tf.distribute.Strategy) -> None:
        self.spec, self.config, self.strategy = spec, config, strategy
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.model = build_model(spec, config)
            self.optimizer = keras.optimizers.Adam(config.learning_rate)
            self.optimizer.build(self.model.trainable_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction="none")
        self.global_batch = config.batch_size * strategy.num_replicas_in_sync

    def _step(self, inputs: dict[str, tf.Tensor], labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            probs = self.model(inputs, training=True)
            per_example = self.loss_fn(labels, probs)
            loss = tf.reduce_sum(per_example) / self.global_batch
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), labels), tf.float32))
        return loss, correct, tf.cast(tf.size(labels), tf.float32)

    @tf.function
    def train_step(self, inputs: dict[str, tf.Tensor], labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
        per_replica = self.strategy.run(self._step, args=(inputs, labels))
        return tuple(self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica)

    def evaluate(self, dataset: tf.data.Dataset) -> dict[str, float]:
        total = correct = loss = 0.0
        for inputs, labels in dataset:
            probs = self.model(inputs, training=False).numpy()
            y = labels.numpy()
            loss += float(np.sum(self.loss_fn(y, probs)))
            correct += float(np.sum(np.argmax(probs, -1) == y))
            total += len(y)
        return {"eval_loss": loss / max(total, 1), "eval_accuracy": correct / max(total, 1)}


def train(examples_dir: str | Path, out: str | Path, config: TrainConfig) -> TrainOutputs:
    """Trains on `examples_dir/train`, validates on `eval`, exports `out/model`."""
    out = Path(out)
    spec = record_spec(examples_dir)
    train_files, eval_files = split_files(examples_dir, "train"), split_files(examples_dir, "eval")
    if not train_files:
        raise InputError(f"{examples_dir}/train: no *.tfrecord.gz files; run `medseq convert` first")
    strategy = make_strategy(config)
    trainer = Trainer(spec, config, strategy)
    checkpoint = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer, epoch=trainer.epoch)
    manager = tf.train.CheckpointManager(checkpoint, str(_worker_dir(out / "checkpoints", strategy)), max_to_keep=3)
    resumed = 0
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        resumed = int(trainer.epoch.numpy())
        print(f"train: resuming from epoch {resumed} ({Path(manager.latest_checkpoint).name})", flush=True)
    # A fixed number of steps over a repeated dataset: every worker runs the same steps,
    # so no collective waits for a worker whose shard ran out.
    steps_per_epoch = max(1, -(-split_count(examples_dir, "train") // trainer.global_batch))
    train_ds = strategy.experimental_distribute_dataset(make_dataset(
        train_files, spec, trainer.global_batch, shuffle=True, seed=config.seed, repeat=True,
        workers=_workers(strategy), augmentations=config.augment))
    batches = iter(train_ds)
    eval_ds = make_dataset(eval_files, spec, config.batch_size, shuffle=False, seed=config.seed) if eval_files else None
    logs = _worker_dir(out / "logs", strategy)
    writer = tf.summary.create_file_writer(str(logs / "train"))
    history: list[dict[str, float]] = []
    for epoch in range(resumed, config.epochs):
        loss_sum = correct = seen = 0.0
        for _ in range(steps_per_epoch):
            inputs, labels = next(batches)
            loss, right, count = trainer.train_step(inputs, labels)
            loss_sum, correct, seen = loss_sum + float(loss), correct + float(right), seen + float(count)
        metrics = {"loss": loss_sum / steps_per_epoch, "accuracy": correct / max(seen, 1)}
        if eval_ds is not None:
            metrics.update(trainer.evaluate(eval_ds))
        with writer.as_default():
            for name, value in metrics.items():
                tf.summary.scalar(name, value, step=epoch + 1)
        writer.flush()
        trainer.epoch.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)
        history.append({"epoch": epoch + 1, **metrics})
        print(f"train: epoch {epoch + 1}/{config.epochs} "
              + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
    model_dir = _worker_dir(out / "model", strategy)
    export_saved_model(trainer.model, spec, model_dir)
    (out / "history.json").write_text(json.dumps(history, indent=2)) if _is_chief(strategy) else None
    return TrainOutputs(str(model_dir), config.epochs - resumed, resumed, history)
