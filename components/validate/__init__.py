"""`medseq validate`: record statistics, schema check and leakage/skew anomalies."""

from __future__ import annotations

from medseq.components.validate.executor import ValidateOutputs, table, validate

__all__ = ["ValidateOutputs", "table", "validate"]
