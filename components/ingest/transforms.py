"""The DoFns of the ingest job: the Beam-free steps of `steps.py`, each run as a DoFn
(`StepDoFn`, which graph.BeamGraph wraps around every step), and the input's listing.

A step's `Tagged` outputs become Beam tagged outputs (rejected inputs leave through
`REJECTED`) and its counts Beam metrics (namespace "ingest").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from ..io import storage
from ..io.dofns import FilesystemDoFn
from . import steps
from .steps import (  # noqa: F401 - the job's names, from one place
    REJECTED,
    Record,
    RejectedRow,
    open_binary,
    outside,
    real_root,
    shard_of,
)


class _BeamCounts(steps.Counts):
    def __init__(self) -> None:
        self._counters: dict[str, Any] = {}

    def inc(self, name: str) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter("ingest", name)
        counter.inc()

    def update(self, name: str, value: int) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.distribution("ingest", name)
        counter.update(value)


class StepDoFn(FilesystemDoFn):
    """Runs a step's bundles and elements; its Tagged outputs go to their tags."""

    def __init__(self, step: Any, filesystem_args: Sequence[str] = ()) -> None:
        super().__init__(filesystem_args)
        self.step = step

    def setup(self) -> None:
        super().setup()
        self.step.counts = _BeamCounts()

    def start_bundle(self) -> None:
        self.step.start_bundle()

    def finish_bundle(self) -> None:
        self.step.finish_bundle()

    def process(self, element: Any) -> Iterator[Any]:
        for out in self.step.process(element):
            yield beam.pvalue.TaggedOutput(out.tag, out.value) if isinstance(out, steps.Tagged) else out


class MatchDoFn(FilesystemDoFn):
    """pattern -> every file it matches (storage.match: the in-process run's listing too)."""

    def process(self, pattern: str) -> Iterator[str]:
        yield from storage.match(pattern)
