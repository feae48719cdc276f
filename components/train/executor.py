"""Training under tf.distribute: epochs of fixed steps, evaluation after each, the best
checkpoint exported, and checkpoints that make a killed job end as if never killed.

A checkpoint is written every `checkpoint_every_steps` steps and at every epoch end.
A restarted job (same command) restores the newest one and replays nothing: the input
stream starts where the checkpoint's step says (dataset.py), so on the default strategy
it ends with the same weights as a job that was never killed; on any strategy with the
same number of steps and the same epoch boundaries.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_framework_config

from ...pipeline.config import TrainConfig, to_dict
from ...pipeline.errors import ConfigError, InputError
from ...pipeline.fingerprints import files_fingerprint
from ..io.examples import RecordSpec, eval_dataset, label_counts, record_spec, split_count, split_files
from ..model.domain import embedding_reference, outputs, training_domain
from ..model.metrics import auc_from_histograms, class_weights
from ..model.network import ANOMALY_SCORE
from ..model.saved_model import export_saved_model
from .dataset import StreamPosition, train_stream
from .loop import Trainer, make_strategy
from .progress import EpochProgress, History
from .state import Checkpoints, agreed_step

__all__ = ["TrainOutputs", "Trainer", "make_strategy", "train"]


@dataclass(frozen=True)
class TrainOutputs:
    model_dir: str
    epochs_run: int  # by this call
    resumed_from_epoch: int
    resumed_from_step: int
    steps: int  # global steps done, in all calls
    best_epoch: int  # the epoch whose weights were exported (0: no eval split, the last)
    stopped_early: bool
    history: list[dict[str, float]]


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


def _batches(strategy: tf.distribute.Strategy, files: list[str], spec: RecordSpec, config: TrainConfig,
             records: int, start_step: int) -> tf.distribute.DistributedIterator:
    """The training stream of every input pipeline, from `start_step` on."""
    replicas = strategy.num_replicas_in_sync

    def stream(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_pipeline = replicas // context.num_input_pipelines  # batches one step takes
        position = StreamPosition(records, context.num_input_pipelines, context.input_pipeline_id,
                                  start_step * per_pipeline)
        return train_stream(files, spec, config.batch_size, config.seed, position, config.augment)

    return iter(strategy.distribute_datasets_from_function(stream))


def _train_metrics(trainer: Trainer, steps: int) -> dict[str, float]:
    state = trainer.state
    if trainer.value or trainer.frames or trainer.anomaly:  # the value's MAE, the phase score's over
        # weighted frames, or the normal series' anomaly score
        name = "frame_mae" if trainer.frames else "prediction_error" if trainer.anomaly else "mae"
        return {"loss": float(state.loss_sum.numpy()) / steps,
                name: float(state.correct.numpy()) / max(
                    float(state.seen.numpy()), 1.0),
                "learning_rate": trainer.learning_rate()}
    return {"loss": float(state.loss_sum.numpy()) / steps,
            "accuracy": float(state.correct.numpy()) / max(float(state.seen.numpy()), 1.0),
            "auc": auc_from_histograms(state.histograms.numpy()),
            "learning_rate": trainer.learning_rate()}


def _train_epoch(trainer: Trainer, batches: tf.distribute.DistributedIterator, checkpoints: Checkpoints,
                 config: TrainConfig, progress: EpochProgress, step: int) -> int:
    """The remaining steps of `progress.epoch` (all of them, or those after a resumed
    checkpoint), with a checkpoint every `checkpoint_every_steps`; returns the step."""
    end = progress.epoch * progress.steps
    while step < end:
        trainer.train_step(batches)
        step += 1
        done = step - (progress.epoch - 1) * progress.steps
        if progress.interactive:
            progress.step(done, float(trainer.state.loss_sum.numpy()) / done)
        if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step < end:
            checkpoints.save(step)
    return step


def _evaluate_epoch(trainer: Trainer, eval_ds: tf.data.Dataset, checkpoints: Checkpoints, config: TrainConfig,
                    epoch: int, metrics: dict[str, float]) -> str:
    """Adds the eval metrics to `metrics`, keeps the best epoch, decides early stopping;
    returns what to say about it."""
    state = trainer.state
    with trainer.moving_average():  # train.ema: the moving average is what is evaluated and kept
        metrics.update(trainer.evaluate(eval_ds))
        monitor, mode = config.monitored
        if monitor not in metrics:
            raise ConfigError(f"train.monitor: expected one of {', '.join(k for k in metrics if 'eval' in k)}, "
                              f"found {monitor!r}")
        note = ""
        if state.improved(metrics[monitor], mode):
            state.best_value.assign(metrics[monitor])
            state.best_epoch.assign(epoch)
            checkpoints.save_best(epoch)
            note = f"best {monitor} so far"
    if config.patience and epoch - int(state.best_epoch.numpy()) >= config.patience:
        state.stopped.assign(True)
        note = f"early stop: no better {monitor} for {config.patience} epoch(s)"
    return note


def anomaly_spec(spec: RecordSpec, normal: str, counts: dict[str, int]) -> RecordSpec:
    """The spec of a model of `normal`'s series alone, on class records that hold them."""
    if normal not in spec.classes or not counts.get(normal):
        raise ConfigError(f"train.anomaly.normal: {normal!r}, but the train split holds no series of it (its "
                          f"classes: {', '.join(f'{c} {counts.get(c, 0)}' for c in spec.classes)}); expected the "
                          "class name of the normal series in labels.csv")
    return dataclasses.replace(spec, target="anomaly", value={"normal": normal})


def anomaly_threshold(model: keras.Model, spec: RecordSpec, splits: list[list[str]], batch_size: int,
                      false_alarm: float) -> dict[str, object]:
    """Where an anomaly model's score flags a series: the (1 - false_alarm) quantile of the
    scores of the normal series of the first of `splits` (file lists) that holds any."""
    for files in (files for files in splits if files):
        found = outputs(model, files, spec, batch_size, only=spec.normal_class)
        normal = found[:, ANOMALY_SCORE] if found is not None else np.zeros(0)
        if len(normal):
            return {"normal": spec.classes[spec.normal_class],
                    "threshold": float(np.quantile(normal, 1 - false_alarm)), "false_alarm": false_alarm,
                    "set_on_series": int(len(normal)), "median": float(np.median(normal))}
    raise InputError("train.target anomaly: no normal series to set the threshold on")


def train(examples_dir: str | Path, out: str | Path, config: TrainConfig) -> TrainOutputs:
    """Trains on `examples_dir/train`, evaluates on `eval` each epoch, exports the best to `out/model`."""
    out = Path(out)
    spec = record_spec(examples_dir)
    if spec.target != config.records_target:
        raise ConfigError(f"train.target: {config.target}, but the records in {examples_dir} answer a {spec.target} "
                          f"(their qc.json); expected the target the records were converted with")
    if config.target == "anomaly":
        spec = anomaly_spec(spec, config.anomaly.normal, label_counts(examples_dir, "train"))
    train_files, eval_files = split_files(examples_dir, "train"), split_files(examples_dir, "eval")
    if not train_files:
        raise InputError(f"{examples_dir}/train: no *.tfrecord.gz files; run `medseq convert` first")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:  # global to the process, and an earlier job may have set it; TF exports no public switch off
        tf_framework_config.disable_op_determinism()
    strategy = make_strategy(config)
    records = split_count(examples_dir, "train")
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    steps_per_epoch = max(1, math.ceil(records / global_batch))
    by_class = not (spec.is_value or spec.is_frames or spec.is_anomaly)
    weights = class_weights(config.class_weight, spec.classes, label_counts(examples_dir, "train")) if by_class \
        else np.ones(0)
    trainer = Trainer(spec, config, strategy, weights, config.epochs * steps_per_epoch)
    state = trainer.state
    checkpoints = Checkpoints(_worker_dir(out / "checkpoints", strategy), state, model=trainer.model,
                              optimizer=trainer.optimizer)
    start = agreed_step(strategy, checkpoints.available_steps(), _workers(strategy))
    if start is not None:
        checkpoints.restore(start)
        print(f"train: resuming at step {start} (epoch {int(state.epochs_done.numpy())} done)", flush=True)
    resumed_epoch, resumed_step = int(state.epochs_done.numpy()), int(state.step.numpy())
    chief = _is_chief(strategy)
    history = History(out, _worker_dir(out / "logs", strategy), chief, resumed_epoch)
    batches = _batches(strategy, train_files, spec, config, records, resumed_step)
    eval_ds = eval_dataset(eval_files, spec, config.batch_size) if eval_files else None
    if eval_ds is None and config.patience:
        raise ConfigError("train.patience: early stopping needs an eval split, found no eval records")
    step = resumed_step
    while int(state.epochs_done.numpy()) < config.epochs and not bool(state.stopped.numpy()):
        epoch = int(state.epochs_done.numpy()) + 1
        progress = EpochProgress(epoch, config.epochs, steps_per_epoch)
        step = _train_epoch(trainer, batches, checkpoints, config, progress, step)
        metrics = {"epoch": float(epoch), **_train_metrics(trainer, steps_per_epoch)}
        note = _evaluate_epoch(trainer, eval_ds, checkpoints, config, epoch, metrics) if eval_ds is not None else ""
        history.add(metrics)
        state.epochs_done.assign(epoch)
        state.reset_epoch()
        checkpoints.save(step)
        progress.end(metrics, note)
    best = checkpoints.restore_best()
    if not best and config.ema:  # no eval split: the last moving average is exported
        trainer.optimizer.finalize_variable_values(trainer.model.trainable_variables)
    model_dir = _worker_dir(out / "model", strategy)
    training = {"records": files_fingerprint(train_files), "epochs": int(state.epochs_done.numpy()), "steps": step,
                "best_epoch": int(state.best_epoch.numpy()) if best else None, "config": to_dict(config),
                "domain": training_domain(train_files, examples_dir)}
    only = spec.normal_class if spec.is_anomaly else None  # an anomaly model's domain: its normal series
    reference, training["domain"]["score"] = embedding_reference(trainer.model, spec, train_files, eval_files,
                                                                 config.batch_size, config.domain_false_alarm, only)
    if spec.is_anomaly:
        training["anomaly"] = anomaly_threshold(trainer.model, spec, [eval_files, train_files],
                                                config.batch_size, config.domain_false_alarm)
    export_saved_model(trainer.model, spec, model_dir, training, reference, trainer.tta)
    if best and chief:
        print(f"train: exported epoch {int(state.best_epoch.numpy())} ({config.monitored[0]} "
              f"{float(state.best_value.numpy()):.4f}) -> {model_dir}", flush=True)
    return TrainOutputs(str(model_dir), int(state.epochs_done.numpy()) - resumed_epoch, resumed_epoch, resumed_step,
                        step, int(state.best_epoch.numpy()) if best else 0, bool(state.stopped.numpy()),
                        list(history.entries))
