"""What training shows and keeps of each epoch: the console, TensorBoard, history.json.

An interactive terminal gets a `keras.utils.Progbar` per epoch; a log file gets one line
per epoch. history.json is rewritten atomically after every epoch and cut back to the
epochs a checkpoint holds when a killed job resumes, so it never shows an epoch twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

HISTORY_FILE = "history.json"
# Logged for train and eval alike (TensorBoard overlays the two runs by name).
CURVES = ("loss", "accuracy", "auc")


class EpochProgress:
    def __init__(self, epoch: int, epochs: int, steps: int, interactive: bool | None = None) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.started = time.monotonic()
        self.bar = None
        if self.interactive:
            print(f"Epoch {epoch}/{epochs}", flush=True)
            self.bar = keras.utils.Progbar(steps, stateful_metrics=["loss"])

    def step(self, done: int, running_loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(done, [("loss", running_loss)] if running_loss is not None else None)

    def end(self, metrics: dict[str, float], note: str = "") -> float:
        seconds = time.monotonic() - self.started
        values = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
        if self.bar is not None:
            self.bar.update(self.steps, [(k, v) for k, v in metrics.items() if k != "epoch"], finalize=True)
            if note:
                print(f"  {note}", flush=True)
        else:
            print(f"train: epoch {self.epoch}/{self.epochs} {values} ({seconds:.1f} s){' ' + note if note else ''}",
                  flush=True)
        return seconds


class History:
    """history.json (a list of per-epoch dicts) and TensorBoard scalars under logs/{train,eval}."""

    def __init__(self, out: Path, logs: Path, write: bool, epochs_done: int) -> None:
        self.path = out / HISTORY_FILE
        self.write_file = write
        self.entries: list[dict[str, float]] = []
        if self.path.exists():
            self.entries = json.loads(self.path.read_text())[:epochs_done]
        self.writers = {split: tf.summary.create_file_writer(str(logs / split)) for split in ("train", "eval")}

    def add(self, entry: dict[str, float]) -> None:
        self.entries.append(entry)
        step = int(entry["epoch"])
        for name, value in entry.items():
            if name == "epoch":
                continue
            split, curve = ("eval", name[len("eval_"):]) if name.startswith("eval_") else ("train", name)
            with self.writers[split].as_default():
                tf.summary.scalar(curve, value, step=step)
        for writer in self.writers.values():
            writer.flush()
        if self.write_file:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(self.entries, indent=2) + "\n")
            os.replace(tmp, self.path)
