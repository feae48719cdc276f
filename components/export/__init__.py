"""`medseq export`: LiteRT and ONNX artifacts of a trained model, behind a parity gate.

convert.py   rebuild the model, trace it unrolled and frozen, convert (built-in ops only)
runtimes.py  run a SavedModel, a .tflite or an .onnx file behind one call
parity.py    the gate: |Δp| and the AUC change on the eval split under the target runtime
executor.py  convert, gate, write, describe (the model-card entries)
"""

from __future__ import annotations

from pathlib import Path

from ...pipeline.config import PipelineConfig, export_format
from ...pipeline.contract import BeamArgs, ExportInputs, absolute
from ..ingest.output_lock import claim
from .executor import EXPORT_FILE, ExportOutputs, export

__all__ = ["EXPORT_FILE", "ExportInputs", "ExportOutputs", "export", "run"]


def run(config: PipelineConfig, inputs: ExportInputs, out: str | Path, beam_args: BeamArgs = ()) -> ExportOutputs:
    """The artifacts `inputs.formats` (else `push.formats`) of `inputs.model` into `out`
    (no Beam: `beam_args` are unused)."""
    formats = inputs.formats or config.push.formats
    claim(absolute(str(out)), "export output")
    return export(inputs.model, inputs.examples, out, [export_format(f, "export") for f in formats],
                  seed=config.evaluate.seed)
