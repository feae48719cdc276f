"""What a site computes on its own records (a Flower ClientApp calls these; see apps.py).

Everything returned here leaves the site: model weights, record counts, aggregate
metrics over a whole split, and the sums that pool a domain reference. No record, pixel,
key, series or patient-level value is ever returned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ...pipeline.config import PipelineConfig, TrainConfig, to_dict
from ...pipeline.errors import ConfigError
from ..io.examples import RecordSpec, eval_dataset, label_counts, record_spec, split_count, split_files
from ..model import domain
from ..model.metrics import class_weights
from ..train import StreamPosition, Trainer, train_stream

# The train keys that decide the model's weights and what they mean: a site whose differ
# cannot average its weights with the others'.
MODEL_KEYS = ("target", "encoder", "conv_filters", "frame_difference", "sequence_norm", "sequence_model",
              "lstm_layers", "lstm_units", "bidirectional", "causal")
EVAL_METRICS = ("eval_loss", "eval_accuracy")  # what a site reports of the federation's model each round
SCORE_BINS = np.linspace(0.0, 20.0, 2001)  # domain scores pooled as a histogram (0.01 wide)


def fingerprint(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def model_config(train: TrainConfig) -> dict[str, Any]:
    settings = to_dict(train)
    return {k: settings[k] for k in MODEL_KEYS}


def contract(spec: RecordSpec) -> dict[str, Any]:
    """The record contract a site's records follow: the preprocessing they were made with,
    their shape, dtype, classes and target (no count, nothing about any one series)."""
    return {"preprocess": spec.preprocess, "frames": spec.frames, "height": spec.height, "width": spec.width,
            "channels": spec.channels, "depth": spec.depth, "dtype": spec.dtype, "classes": list(spec.classes),
            "target": spec.target}


def spec_of(described: dict[str, Any], config: PipelineConfig) -> RecordSpec:
    """The RecordSpec the coordinator builds the model from: the sites' contract, with the
    federation's own ingest policy on pixel PHI and input limits (which predict applies)."""
    ingest = to_dict(config.ingest)
    limits = {k: ingest[k] for k in ("max_inflated_mb", "max_decoded_mb", "decode_timeout_s")}
    return RecordSpec(described["frames"], described["height"], described["width"], described["channels"],
                      described["dtype"], tuple(described["classes"]), described["preprocess"], described["depth"],
                      {"policy": ingest["pixel_phi"]}, limits, target=described["target"])


@dataclass(frozen=True)
class Description:
    """A site's answer to the coordinator's first question: what its records and model are."""

    contract: str  # JSON of contract()
    model: str  # JSON of model_config()
    train_records: int
    eval_records: int
    privacy: str  # JSON of the site's federate.dp: the clipping it applies, the noise and budget it accepts

    def as_config(self) -> dict[str, Any]:
        return asdict(self)


def describe(records: str | Path, config: PipelineConfig) -> Description:
    spec = record_spec(records)
    if spec.target != "class":
        raise ConfigError(f"federated training answers a class per series for now; the records in this site's "
                          f"folder answer a {spec.target}")
    return Description(json.dumps(contract(spec), sort_keys=True), json.dumps(model_config(config.train),
                                                                              sort_keys=True),
                       split_count(records, "train"), split_count(records, "eval"),
                       json.dumps(to_dict(config.federate.dp), sort_keys=True))


class ProximalTrainer(Trainer):
    """FedProx's local objective: the loss plus mu/2 |w - w_global|^2 (Li et al., 2020)."""

    def __init__(self, *args: Any, mu: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mu = mu
        self.anchor = [tf.Variable(v, trainable=False) for v in self.model.trainable_variables]

    def _forward_backward(self, inputs: dict[str, tf.Tensor], labels: tf.Tensor) -> tuple[Any, ...]:
        with tf.GradientTape() as tape:
            probs = self.model(inputs, training=True)
            loss = tf.reduce_sum(self._losses(labels, probs)) / self.global_batch
            drift = tf.add_n([tf.reduce_sum(tf.square(w - a)) for w, a in
                              zip(self.model.trainable_variables, self.anchor, strict=True)])
            scaled = self.optimizer.scale_loss(loss + 0.5 * self.mu * drift)
        return loss, probs, tape.gradient(scaled, self.model.trainable_variables)


def _trainer(records: str | Path, train: TrainConfig, total_steps: int, mu: float = 0.0) -> Trainer:
    spec = record_spec(records)
    weights = class_weights(train.class_weight, spec.classes, label_counts(records, "train"))
    strategy = tf.distribute.get_strategy()
    if mu > 0:
        return ProximalTrainer(spec, train, strategy, weights, total_steps, mu=mu)
    return Trainer(spec, train, strategy, weights, total_steps)


def local_train(records: str | Path, train: TrainConfig, weights: list[np.ndarray], epochs: int, server_round: int,
                mu: float = 0.0, rounds: int = 1, optimizer_file: Path | None = None,
                ) -> tuple[list[np.ndarray], dict[str, float]]:
    """`epochs` passes over the site's train split from the federation's `weights`; the new
    weights and the round's train loss and accuracy. The optimizer's learning rate is set
    by the round: `train.lr_schedule: cosine` runs over the federation's `rounds` (the
    round's rate is the cosine at its middle), not within every round. With
    `optimizer_file` (federate.site_optimizer: keep) the optimizer's state (Adam's moments
    and step) carries over from the site's previous round and is saved there after this
    one; without, every round starts a fresh optimizer."""
    if train.lr_schedule == "cosine":
        progress = (max(server_round, 1) - 0.5) / max(rounds, server_round, 1)
        train = dataclasses.replace(train, lr_schedule="constant",
                                    learning_rate=train.learning_rate * 0.5 * (1 + math.cos(math.pi * progress)))
    spec = record_spec(records)
    files, n = split_files(records, "train"), split_count(records, "train")
    steps = epochs * max(1, math.ceil(n / train.batch_size))
    trainer = _trainer(records, train, steps, mu)
    trainer.model.set_weights(weights)
    if optimizer_file is not None:
        _restore_optimizer(trainer.optimizer, optimizer_file)
    if isinstance(trainer, ProximalTrainer):
        for anchor, w in zip(trainer.anchor, trainer.model.trainable_variables, strict=True):
            anchor.assign(w)
    seed = train.seed * 1_000 + server_round  # each round its own order and augmentation
    batches = iter(train_stream(files, spec, train.batch_size, seed, StreamPosition(n, 1, 0, 0), train.augment))
    for _ in range(steps):
        trainer.train_step(batches)
    if optimizer_file is not None:
        _save_optimizer(trainer.optimizer, optimizer_file)
    state = trainer.state
    metrics = {"train_loss": float(state.loss_sum.numpy()) / steps,
               "train_accuracy": float(state.correct.numpy()) / max(float(state.seen.numpy()), 1.0)}
    return [np.asarray(w) for w in trainer.model.get_weights()], metrics


def _carried(optimizer: Any) -> list[Any]:
    """The optimizer variables a site carries between rounds: all but the learning rate,
    which the round sets."""
    return [v for v in optimizer.variables if not v.path.endswith("learning_rate")]


def _restore_optimizer(optimizer: Any, path: Path) -> None:
    """The state `_save_optimizer` left after the site's previous round, if it fits this
    optimizer (a file from another model is not used)."""
    if not path.is_file():
        return
    with np.load(path) as saved:
        arrays = [saved[f"v{i}"] for i in range(len(saved.files))]
    carried = _carried(optimizer)
    if len(arrays) == len(carried) and all(a.shape == tuple(v.shape) for a, v in zip(arrays, carried, strict=True)):
        for variable, array in zip(carried, arrays, strict=True):
            variable.assign(array)


def _save_optimizer(optimizer: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    arrays: dict[str, Any] = {f"v{i}": np.asarray(v) for i, v in enumerate(_carried(optimizer))}
    np.savez(partial, **arrays)
    os.replace(partial, path)


def local_evaluate(records: str | Path, train: TrainConfig, weights: list[np.ndarray]) -> dict[str, float]:
    """The federation's model on the site's eval split: loss, accuracy and AUC over the
    whole split (NaN where the split lacks a class)."""
    trainer = _trainer(records, train, 1)
    trainer.model.set_weights(weights)
    files = split_files(records, "eval")
    if not files:
        return {}
    return {k: float(v) for k, v in trainer.evaluate(eval_dataset(files, record_spec(records),
                                                                  train.batch_size)).items()}


def _embeddings(records: str | Path, train: TrainConfig, weights: list[np.ndarray], split: str) -> np.ndarray:
    trainer = _trainer(records, train, 1)
    trainer.model.set_weights(weights)
    return domain.embeddings(trainer.model, split_files(records, split), record_spec(records), train.batch_size)


def moments(records: str | Path, train: TrainConfig, weights: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The sums that pool the training domain's reference across sites: the record count,
    the sum of the train embeddings and the sum of their outer products (never one
    record's embedding)."""
    x = _embeddings(records, train, weights, "train")
    return {"count": np.asarray([len(x)], np.float64), "sum": x.sum(0), "outer": x.T @ x}


def score_histogram(records: str | Path, train: TrainConfig, weights: list[np.ndarray], mean: np.ndarray,
                    precision: np.ndarray) -> np.ndarray:
    """Counts of the eval split's domain scores in SCORE_BINS (the last bin holds all above)."""
    x = _embeddings(records, train, weights, "eval")
    if not len(x):
        x = _embeddings(records, train, weights, "train")
    scores = np.minimum(domain.scores(x, mean, precision), SCORE_BINS[-1] - 1e-9)
    return np.histogram(scores, SCORE_BINS)[0].astype(np.float64)


def site_domain(records: str | Path) -> dict[str, Any]:
    """The site's training domain (model/domain.py): modalities, frame axes, colours,
    manufacturers, and the ranges of frames, spacing and interval; no series' own value
    beyond the extremes of a range."""
    return domain.training_domain(split_files(records, "train"), records)
