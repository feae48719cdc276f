"""The names a federation writes, and its one-line failure (no Flower import here)."""

from __future__ import annotations

from ...pipeline.errors import MedseqError

MODEL_DIR = "model"  # OUT/model: the federated candidate, a SavedModel as `medseq train` writes it
RECORD_FILE = "federation.json"  # OUT/federation.json: the run's record
SENT_FILE = "sent.jsonl"  # a site's OUT/sent.jsonl: every message it sent, as it left
COORDINATOR = "federate: "  # how the coordinator's lines start in Flower's log (shown by `medseq federate run`)
FAILED = "medseq federate: "  # how its one line of failure starts
UNIFORM_WEIGHT = "uniform-weight"  # the metric the mean is weighted by under federate.dp (1 from every site)


class FederationError(MedseqError):
    """The federation cannot go on (too few sites agree or answer): one line."""


def failure_line(log: str) -> str | None:
    """The coordinator's one line in a run's log, if it failed with one."""
    lines = [line.split(FAILED, 1)[1].strip() for line in log.splitlines() if FAILED in line]
    return lines[-1] if lines else None
