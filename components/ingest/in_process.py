"""A small local input with no Beam option: the job's own steps, called in this process.

A pipeline's fixed cost (importing Beam, 2-2.5 s, starting its workers, running its
stages) is about 10 s on 2 cores, more than converting a few thousand files in one
process (SMALL_INPUT_FILES). For an input this small `medseq convert` calls the very steps
the Beam job's DoFns run (`steps`), in the order its graph (`executor.build`) runs them,
and writes the same files into the same staging folder; `executor.finalize` then does
the rest for both. Nothing here imports Beam (local files go through `storage`).
tests/components/ingest/test_pinned_records.py holds the two to the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from medseq.components.ingest import storage
from medseq.components.ingest.steps import (
    REJECTED,
    BuildRecordStep,
    ReadHeaderStep,
    Record,
    RejectedRow,
    Tagged,
    WriteShardStep,
    shard_of,
)
from medseq.pipeline.config import IngestConfig, PreprocessConfig


def run_in_process(pattern: str, root: str, staging: str, key: bytes, labels: dict[str, str],
                   classes: tuple[str, ...], preprocess: PreprocessConfig, ingest: IngestConfig) -> None:
    """MatchFiles -> ReadHeaders -> GroupBySeries -> BuildRecords -> shards and side files."""
    groups: dict[str, list[bytes]] = {}
    rejected: list[RejectedRow] = []
    read = ReadHeaderStep(root, key)
    for path in storage.match(pattern):  # what fileio.MatchFiles lists
        for out in read.process(path):
            if isinstance(out, Tagged):
                rejected.append(out.value)
            else:
                source, header = cast("tuple[str, bytes]", out)
                groups.setdefault(source, []).append(header)
    records: list[Record] = []
    labeled: list[str] = []
    build = BuildRecordStep(root, key, labels, classes, preprocess, ingest.split, staging=staging,
                        decode_timeout_s=ingest.decode_timeout_s)
    build.start_bundle()
    for group in groups.items():
        for out in build.process(group):
            if isinstance(out, Record):
                records.append(out)
            elif isinstance(out, Tagged) and out.tag == REJECTED:
                rejected.append(out.value)
            elif isinstance(out, Tagged):
                labeled.append(out.value)
    build.finish_bundle()
    sizes: dict[str, int] = {}
    for record in records:
        sizes[record.split] = sizes.get(record.split, 0) + record.nbytes
    shards: dict[tuple[str, int, int], list[Record]] = {}
    for record in records:
        shard, _ = shard_of(record, sizes, ingest.num_shards, ingest.shard_size_mb * 2**20)
        shards.setdefault(shard, []).append(record)
    write = WriteShardStep(staging)
    for shard_records in shards.items():
        list(write.process(shard_records))
    _write_lines(staging, "_index", (r.index_line() for r in records))
    _write_lines(staging, "_rejected", (r.to_json() for r in rejected))
    _write_lines(staging, "_labeled", labeled)


def _write_lines(staging: str, prefix: str, lines: Iterable[str]) -> None:
    """One text file per side output, as WriteToText leaves them for `finalize`."""
    path = storage.join(staging, f"{prefix}-in-process")
    with storage.create(path) as f:
        f.write("".join(line + "\n" for line in lines).encode())
