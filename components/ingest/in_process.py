"""A small local input with no Beam option: the job's own DoFns, called in this process.

Building and starting a Beam pipeline costs about 1.4 s here, more than converting a
few series. For an input this small `medseq convert` calls the very DoFns of the Beam
job (`transforms`), in the order its graph (`executor.build`) runs them, and writes the
same files into the same staging folder; `executor.finalize` then does the rest for
both. tests/components/ingest/test_pinned_records.py holds the two to the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from medseq.components.ingest.transforms import BuildRecord, ReadHeader, Record, RejectedRow, WriteShard, shard_of
from medseq.pipeline.config import IngestConfig, PreprocessConfig


def run_in_process(pattern: str, root: str, staging: str, key: bytes, labels: dict[str, str],
                   classes: tuple[str, ...], preprocess: PreprocessConfig, ingest: IngestConfig) -> None:
    """MatchFiles -> ReadHeaders -> GroupBySeries -> BuildRecords -> shards and side files."""
    groups: dict[str, list[bytes]] = {}
    rejected: list[RejectedRow] = []
    read = ReadHeader(root, key)
    for match in FileSystems.match([pattern])[0].metadata_list:  # what fileio.MatchFiles lists
        for out in read.process(match.path):
            if isinstance(out, TaggedOutput):
                rejected.append(out.value)
            else:
                source, header = cast("tuple[str, bytes]", out)
                groups.setdefault(source, []).append(header)
    records: list[Record] = []
    labeled: list[str] = []
    build = BuildRecord(root, key, labels, classes, preprocess, ingest.split, staging=staging,
                        decode_timeout_s=ingest.decode_timeout_s)
    build.start_bundle()
    for group in groups.items():
        for out in build.process(group):
            if isinstance(out, Record):
                records.append(out)
            elif isinstance(out, TaggedOutput) and out.tag == BuildRecord.REJECTED:
                rejected.append(out.value)
            elif isinstance(out, TaggedOutput):
                labeled.append(out.value)
    build.finish_bundle()
    sizes: dict[str, int] = {}
    for record in records:
        sizes[record.split] = sizes.get(record.split, 0) + record.nbytes
    shards: dict[tuple[str, int, int], list[Record]] = {}
    for record in records:
        shard, _ = shard_of(record, sizes, ingest.num_shards, ingest.shard_size_mb * 2**20)
        shards.setdefault(shard, []).append(record)
    write = WriteShard(staging)
    for shard_records in shards.items():
        list(write.process(shard_records))
    _write_lines(staging, "_index", (r.index_line() for r in records))
    _write_lines(staging, "_rejected", (r.to_json() for r in rejected))
    _write_lines(staging, "_labeled", labeled)


def _write_lines(staging: str, prefix: str, lines: Iterable[str]) -> None:
    """One text file per side output, as WriteToText leaves them for `finalize`."""
    path = FileSystems.join(staging, f"{prefix}-in-process")
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write("".join(line + "\n" for line in lines).encode())
