"""DoFns that read or write a job's paths on any filesystem, for every Beam stage."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import apache_beam as beam

from . import storage


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
