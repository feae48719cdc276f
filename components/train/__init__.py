"""`medseq train`: the TimeDistributed CNN + LSTM under tf.distribute.

`dataset` reads the records, `model` builds the network, `executor` runs the loop and
checkpoints, `export` writes the SavedModel with its serving signatures.
"""

from __future__ import annotations

from pathlib import Path

from medseq.components.train.executor import TrainOutputs, train
from medseq.pipeline.config import TrainConfig

__all__ = ["TrainOutputs", "run"]


def run(examples_dir: str | Path, out: str | Path, config: TrainConfig) -> TrainOutputs:
    return train(examples_dir, out, config)
