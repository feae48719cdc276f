"""`medseq evaluate`: TFMA on the eval split, candidate vs. the served model, then
BLESSED or NOT_BLESSED with every threshold and its numbers, and report.html."""

from __future__ import annotations

from pathlib import Path

from ...pipeline.config import PipelineConfig
from ...pipeline.contract import BeamArgs, EvaluateInputs, absolute
from .executor import EvaluateOutputs, evaluate


def run(config: PipelineConfig, inputs: EvaluateInputs, out: str | Path,
        beam_args: BeamArgs = ()) -> EvaluateOutputs:
    """TFMA on the eval split of `inputs.examples`: the candidate against `config.evaluate`'s
    thresholds and the baseline, written to `out` with BLESSED or NOT_BLESSED."""
    section = config.evaluate
    baseline = absolute(inputs.baseline) if inputs.baseline else None
    return evaluate(absolute(inputs.examples), absolute(inputs.model), absolute(str(out)), section.eval_config,
                    baseline, beam_args=[*section.beam_args, *beam_args], settings=section)


def summary(out: EvaluateOutputs) -> str:
    """The console lines of an evaluation: the decision, then every check."""
    lines = [f"evaluate: {'BLESSED' if out.blessed else 'NOT_BLESSED'} -> {out.out}"]
    lines += [f"  {c.line()}" for c in out.checks]
    lines += [f"  {r}" for r in out.reasons if not any(r == c.line() for c in out.checks)]
    if out.temporal:
        lines.append("  temporal reliance: " + ", ".join(f"{k} {v:.3f}" for k, v in out.temporal.items()))
    return "\n".join(lines)


__all__ = ["EvaluateInputs", "EvaluateOutputs", "evaluate", "run", "summary"]
