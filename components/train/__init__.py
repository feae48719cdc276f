"""`medseq train`: the TimeDistributed CNN + LSTM under tf.distribute.

`dataset` reads the records, `model` builds the network, `executor` runs the loop and
checkpoints, `export` writes the SavedModel with its serving signatures.
"""

from __future__ import annotations

from pathlib import Path

from ...pipeline.config import PipelineConfig
from ...pipeline.contract import BeamArgs, TrainInputs, absolute
from .executor import TrainOutputs, train

__all__ = ["TrainInputs", "TrainOutputs", "run", "train"]


def run(config: PipelineConfig, inputs: TrainInputs, out: str | Path, beam_args: BeamArgs = ()) -> TrainOutputs:
    """Trains on `inputs.examples` with `config.train` into `out` (no Beam: `beam_args` are unused)."""
    return train(absolute(inputs.examples), absolute(str(out)), config.train)
