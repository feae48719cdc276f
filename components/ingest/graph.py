"""The ingest job, defined once: source -> headers -> group by series -> records -> shards.

`ingest_graph` names every step, its input and its tagged outputs against a small `Graph`
interface. Its first steps are its `Source`'s: a folder or glob on any filesystem lists
its files (sources.FilesSource); a DICOMweb archive fetches its series into a cache
(dicomweb.DicomwebSource), inside the same graph, on the same workers. Two executors
read it: `BeamGraph` (executor.py) builds the Beam pipeline, with these labels as its
stable step names, for any runner; `LocalGraph` (in_process.py) runs the same steps in
this process for a small local input, importing no Beam. Adding a step is one edit
here. tests/components/ingest/test_pinned_records.py holds both to the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ...pipeline.config import IngestConfig, PreprocessConfig
from ..io import storage
from ..preprocessing.limits import InputLimits
from .labels import LabelTable
from .steps import (
    IDENTIFIERS,
    REJECTED,
    BuildRecordStep,
    Placed,
    ReadHeaderStep,
    WriteShardStep,
    redacted_line,
    shard_of,
)

# Side files that executor.merge_side_files() merges.
INDEX, REJECTED_LINES, LABELED_LINES = "_index", "_rejected", "_labeled"


class Graph(Protocol):
    """What the job needs of an executor. A collection is whatever the executor passes
    between steps (a PCollection, a list)."""

    spills_headers: bool  # headers spill to the staging folder (a runner that holds a GroupByKey in memory)
    parallel: bool  # the elements of a step run at once on several workers (Beam); False: one after another

    def create(self, label: str, items: list[Any]) -> Any: ...
    def files(self, label: str, pattern: str) -> Any: ...
    def spread(self, label: str, items: Any) -> Any: ...
    def pardo(self, label: str, items: Any, step: Any, tags: tuple[str, ...] = ()) -> tuple[Any, ...]: ...
    def map(self, label: str, items: Any, fn: Callable[..., Any], **kwargs: Any) -> Any: ...
    def group(self, label: str, pairs: Any) -> Any: ...
    def sum_per_key(self, label: str, pairs: Any) -> Any: ...
    def as_dict(self, pairs: Any) -> Any: ...
    def flatten(self, label: str, collections: Iterable[Any]) -> Any: ...
    def write_lines(self, label: str, lines: Any, prefix: str) -> None: ...


class Source(Protocol):
    """Where the job's files come from: the steps that give their paths (each relative
    to `root` in what the job reports), and the rows of the inputs it could not give."""

    @property
    def root(self) -> str: ...
    def check(self) -> None: ...  # the input there, or one line (after labels.csv is read)
    def paths(self, g: Graph, staging: str) -> tuple[Any, Any | None]: ...
    def done(self, staging: str) -> None: ...  # after the job, before its side files are merged


def _record_size(placed: Placed) -> tuple[str, int]:
    return placed.record.split, placed.record.nbytes


def _index_line(placed: Placed) -> str:
    return placed.record.index_line()


def ingest_graph(g: Graph, source: Source, staging: str, key: bytes, labels: LabelTable,
                 preprocess: PreprocessConfig, ingest: IngestConfig) -> None:
    """Adds the ingest job to `g`, writing shards and side files under `staging`; `labels`
    are keyed by the headers' `labels.column` (labels.LABEL_KEYS)."""
    paths, not_given = source.paths(g, staging)
    root = source.root
    limits = InputLimits.of(ingest)
    read = ReadHeaderStep(root, key, staging=staging if g.spills_headers else None, limits=limits)
    headers, unreadable, identifiers = g.pardo("ReadHeaders", paths, read, (REJECTED, IDENTIFIERS))
    build = BuildRecordStep(root, key, labels.labels, labels.classes, preprocess, ingest.split, staging=staging,
                            limits=limits, pixel_phi=ingest.pixel_phi, label_column=labels.column,
                            target=labels.target, bad_labels=labels.bad)
    records, rejected, labeled = g.pardo("BuildRecords", g.group("GroupBySeries", headers), build,
                                         (BuildRecordStep.REJECTED, BuildRecordStep.LABELED))
    sizes = g.sum_per_key("SizePerSplit", g.map("RecordSizes", records, _record_size))
    shards = g.map("AssignShards", records, shard_of, sizes=g.as_dict(sizes), num_shards=ingest.num_shards,
                   shard_bytes=ingest.shard_size_mb * 2**20)
    g.pardo("WriteShards", g.group("GroupByShard", shards), WriteShardStep(staging))
    g.write_lines("WriteIndex", g.map("IndexLines", records, _index_line), storage.join(staging, INDEX))
    # One rule hashes every reported path: the identifier tokens of every header the job read.
    tokens = g.as_dict(g.sum_per_key("IdentifierTokens", identifiers))
    every = (unreadable, rejected) if not_given is None else (not_given, unreadable, rejected)
    g.write_lines("WriteRejected", g.map("RejectedLines", g.flatten("AllRejected", every), redacted_line, key=key,
                                         identifiers=tokens), storage.join(staging, REJECTED_LINES))
    g.write_lines("WriteLabeled", labeled, storage.join(staging, LABELED_LINES))
