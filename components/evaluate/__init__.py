"""`medseq evaluate`: TFMA on the eval split, candidate vs. the served model, then
BLESSED or NOT_BLESSED."""

from __future__ import annotations

from medseq.components.evaluate.executor import EvaluateOutputs, evaluate

__all__ = ["EvaluateOutputs", "evaluate"]
