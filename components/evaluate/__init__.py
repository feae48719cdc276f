"""`medseq evaluate`: TFMA on the eval split, candidate vs. the served model, then
BLESSED or NOT_BLESSED with every threshold and its numbers, and report.html."""

from __future__ import annotations

from medseq.components.evaluate.executor import EvaluateOutputs, evaluate


def summary(out: EvaluateOutputs) -> str:
    """The console lines of an evaluation: the decision, then every check."""
    lines = [f"evaluate: {'BLESSED' if out.blessed else 'NOT_BLESSED'} -> {out.out}"]
    lines += [f"  {c.line()}" for c in out.checks]
    lines += [f"  {r}" for r in out.reasons if not any(r == c.line() for c in out.checks)]
    if out.temporal:
        lines.append("  temporal reliance: " + ", ".join(f"{k} {v:.3f}" for k, v in out.temporal.items()))
    return "\n".join(lines)


__all__ = ["EvaluateOutputs", "evaluate", "summary"]
