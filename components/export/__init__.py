"""`medseq export`: LiteRT and ONNX artifacts of a trained model, behind a parity gate.

convert.py   rebuild the model, trace it unrolled and frozen, convert (built-in ops only)
parity.py    the gate: |Δp| and the AUC change on the eval split under the target runtime
             (the `export` config section; the runtimes are model/runtimes.py); a causal
             model's step, stepped frame by frame against the whole sequence
executor.py  convert, gate, write, describe (the model-card entries)
"""

from __future__ import annotations

from pathlib import Path

from ...pipeline.config import PipelineConfig, export_format
from ...pipeline.contract import BeamArgs, ExportInputs
from ..io.output_lock import claim
from ..io.storage import absolute
from .executor import EXPORT_FILE, ExportOutputs, export, saved_step_parity

__all__ = ["EXPORT_FILE", "ExportInputs", "ExportOutputs", "export", "run", "saved_step_parity"]


def run(config: PipelineConfig, inputs: ExportInputs, out: str | Path, beam_args: BeamArgs = ()) -> ExportOutputs:
    """The artifacts `inputs.formats` (else `push.formats`) of `inputs.model` into `out`
    (no Beam: `beam_args` are unused)."""
    formats = inputs.formats or config.push.formats
    claim(absolute(str(out)), "export output")
    return export(inputs.model, inputs.examples, out, [export_format(f, "export") for f in formats],
                  settings=config.export)
