"""The DoFns of the ingest job: the Beam-free steps of `steps.py`, each run as a DoFn
(`StepDoFn`, which graph.BeamGraph wraps around every step; the named DoFns below are the
same for use in other pipelines and tests).

A step's `Tagged` outputs become Beam tagged outputs (rejected inputs leave through
`REJECTED`) and its counts Beam metrics (namespace "ingest").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from . import steps, storage
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


class FilesystemDoFn(beam.DoFn):
    """A DoFn that reads or writes the job's paths, with Beam's filesystems configured
    by the job's options (an S3 endpoint and keys) in its setup. Beam 2.77's local
    multi-process workers and its EXTERNAL worker pool start without them: its S3
    filesystem there cannot open a file ("Must provide one of client or options").
    Empty `filesystem_args` (every path local): nothing is set."""

    def __init__(self, filesystem_args: Sequence[str] = ()) -> None:
        self.filesystem_args = tuple(filesystem_args)

    def setup(self) -> None:
        if self.filesystem_args:
            storage.use_options(self.filesystem_args)


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


class WriteLinesDoFn(FilesystemDoFn):
    """Lines -> one file `PREFIX-<id>.jsonl` per bundle, for `storage.read_lines(PREFIX)`.
    Written under a name it ignores, then renamed: a bundle that fails leaves no file
    it would read."""

    def __init__(self, prefix: str, filesystem_args: Sequence[str] = ()) -> None:
        super().__init__(filesystem_args)
        self.prefix = prefix

    def start_bundle(self) -> None:
        self.lines: list[str] = []

    def process(self, line: str) -> None:
        self.lines.append(line)

    def finish_bundle(self) -> None:
        if not self.lines:
            return
        name = uuid.uuid4().hex
        folder, start = self.prefix.rsplit("/", 1)
        tmp = storage.join(folder, f"_tmp-{start.lstrip('_')}-{name}")
        with storage.create(tmp) as f:
            f.write("".join(line + "\n" for line in self.lines).encode())
        storage.rename(tmp, f"{self.prefix}-{name}.jsonl")
        self.lines = []
