"""`medseq evaluate`: TFMA on the eval split, candidate vs. the served model, then
BLESSED or NOT_BLESSED with every threshold and its numbers, and report.html."""

from __future__ import annotations

import os
from pathlib import Path

from ...pipeline import features as F
from ...pipeline.config import PipelineConfig
from ...pipeline.contract import BeamArgs, EvaluateInputs
from ..io import storage
from ..io.output_lock import claim
from ..io.remote_errors import on_filesystems
from ..io.storage import absolute
from .executor import EvaluateOutputs, evaluate, temp_location

RECORDS_COPY = "records"  # OUT/records: qc.json and the eval split, copied from an object store


def run(config: PipelineConfig, inputs: EvaluateInputs, out: str | Path,
        beam_args: BeamArgs = ()) -> EvaluateOutputs:
    """TFMA on the eval split of `inputs.examples`: the candidate against `config.evaluate`'s
    thresholds and the baseline, written to `out` with BLESSED or NOT_BLESSED. Records on
    an object store are read from a copy of their eval split in OUT/records; with Beam's
    --temp_location, TFMA's workers write there and OUT/metrics is copied back."""
    section = config.evaluate
    baseline = absolute(inputs.baseline) if inputs.baseline else None
    given = [*section.beam_args, *beam_args]
    examples, out_path = absolute(inputs.examples), absolute(str(out))
    temp = temp_location(given)
    with on_filesystems(given, examples, *([temp] if temp else [])):
        claim(out_path, "evaluate output")
        if storage.remote(examples):  # TensorFlow 2.21 reads no s3://: the eval split is read from a copy
            examples = storage.local_copy(examples, os.path.join(out_path, RECORDS_COPY), only=(F.QC_FILE, "eval/"))
        return evaluate(examples, absolute(inputs.model), out_path, section.eval_config, baseline,
                        beam_args=given, settings=section)


def summary(out: EvaluateOutputs) -> str:
    """The console lines of an evaluation: the decision, then every check."""
    lines = [f"evaluate: {'BLESSED' if out.blessed else 'NOT_BLESSED'} -> {out.out}"]
    lines += [f"  {c.line()}" for c in out.checks]
    lines += [f"  {r}" for r in out.reasons if not any(r == c.line() for c in out.checks)]
    if out.temporal:
        lines.append("  temporal reliance: " + ", ".join(f"{k} {v:.3f}" for k, v in out.temporal.items()))
    return "\n".join(lines)


__all__ = ["EvaluateInputs", "EvaluateOutputs", "evaluate", "run", "summary"]
