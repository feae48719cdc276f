"""`medseq validate`: record statistics, schema check, leakage/skew anomalies and drift."""

from __future__ import annotations

from pathlib import Path

from ...pipeline import features as F
from ...pipeline.config import PipelineConfig
from ...pipeline.contract import BeamArgs, ValidateInputs
from ..io.output_lock import claim
from ..io.remote_errors import on_filesystems
from ..io.storage import absolute
from .executor import ValidateOutputs, table, validate

__all__ = ["ValidateInputs", "ValidateOutputs", "run", "table", "validate"]


def run(config: PipelineConfig, inputs: ValidateInputs, out: str | Path,
        beam_args: BeamArgs = ()) -> ValidateOutputs:
    """Statistics of `inputs.examples` checked against `config.validate`, written to `out`."""
    section = config.validate
    given = [*section.beam_args, *beam_args]
    examples, out_path = absolute(inputs.examples), absolute(str(out))
    with on_filesystems(given, examples, out_path):
        claim(out_path, "validate output", (F.STATS_FILE, F.ANOMALIES_FILE, "stats.txt", "schema.pbtxt"))
        return validate(examples, out_path, section.schema, section.infer_schema, section.max_label_linf,
                        given, section.max_target_shift,
                        absolute(inputs.baseline) if inputs.baseline else None)
