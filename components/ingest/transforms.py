"""The DoFns of the ingest job: the Beam-free steps of `steps.py`, each run as a DoFn
(`StepDoFn`, which graph.BeamGraph wraps around every step; the named DoFns below are the
same for use in other pipelines and tests).

A step's `Tagged` outputs become Beam tagged outputs (rejected inputs leave through
`REJECTED`) and its counts Beam metrics (namespace "ingest").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from ...pipeline.config import PreprocessConfig, SplitConfig
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


class StepDoFn(beam.DoFn):
    """Runs a step's bundles and elements; its Tagged outputs go to their tags."""

    def __init__(self, step: Any) -> None:
        self.step = step

    def setup(self) -> None:
        self.step.counts = _BeamCounts()

    def start_bundle(self) -> None:
        self.step.start_bundle()

    def finish_bundle(self) -> None:
        self.step.finish_bundle()

    def process(self, element: Any) -> Iterator[Any]:
        for out in self.step.process(element):
            yield beam.pvalue.TaggedOutput(out.tag, out.value) if isinstance(out, steps.Tagged) else out


class ReadHeader(StepDoFn):
    """steps.ReadHeaderStep: path -> (series key source, header), or a RejectedRow on REJECTED."""

    REJECTED = steps.REJECTED

    def __init__(self, root: str, key: bytes, *, staging: str | None = None,
                 max_inflated_mb: float = steps.DEFAULT_MAX_INFLATED_MB) -> None:
        super().__init__(steps.ReadHeaderStep(root, key, staging=staging, max_inflated_mb=max_inflated_mb))


class BuildRecord(StepDoFn):
    """steps.BuildRecordStep: (series key source, headers) -> Placed(Record, example); RejectedRows on
    REJECTED, the keyed hashes of labeled series on LABELED."""

    REJECTED = steps.REJECTED
    LABELED = steps.LABELED

    def __init__(self, root: str, key: bytes, labels: dict[str, str], classes: tuple[str, ...],
                 preprocess_config: PreprocessConfig, split: SplitConfig, *, staging: str,
                 decode_timeout_s: float | None = None) -> None:
        super().__init__(steps.BuildRecordStep(root, key, labels, classes, preprocess_config, split,
                                               staging=staging, decode_timeout_s=decode_timeout_s))


class WriteShard(StepDoFn):
    """steps.WriteShardStep: ((split, shard, n), records) -> the shard file's path."""

    def __init__(self, staging: str) -> None:
        super().__init__(steps.WriteShardStep(staging))
