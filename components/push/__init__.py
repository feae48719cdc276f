"""`medseq push`: a blessed model becomes the next integer version for TF Serving."""

from __future__ import annotations

from pathlib import Path

from ...pipeline.config import PipelineConfig
from ...pipeline.contract import BeamArgs, PushInputs
from .executor import PushOutputs, push, served_model

__all__ = ["PushInputs", "PushOutputs", "push", "run", "served_model"]


def run(config: PipelineConfig, inputs: PushInputs, out: str | Path, beam_args: BeamArgs = ()) -> PushOutputs:
    """Pushes `inputs.model` into the serving folder `out` if `inputs.evaluation` blessed it
    (no Beam: `beam_args` are unused)."""
    section = config.push
    return push(inputs.model, inputs.evaluation, out, section.model_name, section.keep_versions,
                section.warmup_batch_sizes, section.formats, inputs.examples, config.export)
