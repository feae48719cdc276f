"""`medseq train`: the TimeDistributed CNN + LSTM under tf.distribute.

`dataset` reads the records, `model` builds the network, `executor` runs the loop and
checkpoints, `export` writes the SavedModel with its serving signatures.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...pipeline.config import PipelineConfig
from ...pipeline.contract import BeamArgs, TrainInputs
from ..io import storage
from ..io.output_lock import claim
from ..io.remote_errors import on_filesystems
from ..io.storage import absolute
from .dataset import StreamPosition, train_stream
from .executor import TrainOutputs, train
from .loop import Trainer

# Trainer, train_stream and StreamPosition: one site's local rounds of federated training
# (components/federate/site.py) take the same step on the same stream.
__all__ = ["StreamPosition", "TrainInputs", "TrainOutputs", "Trainer", "run", "train", "train_stream"]


RECORDS_COPY = "records"  # OUT/records: a local copy of records that live on an object store


def run(config: PipelineConfig, inputs: TrainInputs, out: str | Path, beam_args: BeamArgs = ()) -> TrainOutputs:
    """Trains on `inputs.examples` with `config.train` into `out`. Records on an object
    store (TensorFlow 2.21 reads gs:// but has no s3://) are first copied into
    OUT/records, through Beam's filesystems configured by `beam_args`."""
    examples, out_path = absolute(inputs.examples), absolute(str(out))
    claim(out_path, "train output")
    if storage.remote(examples):
        with on_filesystems(beam_args, examples):
            examples = storage.local_copy(examples, os.path.join(out_path, RECORDS_COPY))
    return train(examples, out_path, config.train)
