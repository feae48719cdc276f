"""The ingest job's files: local paths through the standard library, any other
filesystem (gs://, s3://, hdfs://...) through Beam's `FileSystems`, imported only then.

Importing Beam costs about 2 s of a one-series convert's 3.5 s on 2 cores (`python -X
importtime`), and a small local input runs in-process without a pipeline
(`in_process.py`): that run imports no Beam at all. Local paths behave as Beam's
`LocalFileSystem` makes them behave (files read and written as stored, parent folders
made on create, folders deleted whole), so both runs write the same bytes.
"""

from __future__ import annotations

import os
import shutil
from typing import IO, Any


def remote(path: str) -> bool:
    return "://" in path


def _beam() -> Any:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _uncompressed() -> Any:
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


def open_binary(path: str) -> IO[bytes]:
    """A file read as stored (no decompression by extension)."""
    if remote(path):
        return _beam().open(path, compression_type=_uncompressed())
    return open(path, "rb")


def create(path: str) -> IO[bytes]:
    """A new file written as given; local parent folders are made."""
    if remote(path):
        return _beam().create(path, compression_type=_uncompressed())
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    return open(path, "wb")


def join(base: str, *parts: str) -> str:
    return _beam().join(base, *parts) if remote(base) else os.path.join(base, *parts)


def exists(path: str) -> bool:
    return _beam().exists(path) if remote(path) else os.path.exists(path)


def mkdirs(path: str) -> None:
    _beam().mkdirs(path) if remote(path) else os.makedirs(path)


def rename(source: str, target: str) -> None:
    _beam().rename([source], [target]) if remote(source) else os.rename(source, target)


def delete(paths: list[str]) -> None:
    """Files, and folders with everything in them."""
    for path in paths:
        if remote(path):
            _beam().delete([path])
        elif os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def match(pattern: str, limit: int | None = None) -> list[str]:
    """The files a glob matches, as Beam's `FileSystems.match` lists them. A local
    folder's `folder/**` is every file os.walk finds under it (links to folders not
    followed; files that vanish or dangle skipped, as Beam's `LocalFileSystem` skips
    them); any other pattern is Beam's to match."""
    folder = pattern[:-3] if pattern.endswith("/**") else None
    if folder is None or remote(pattern) or any(ch in folder for ch in "*?["):
        return [m.path for m in _beam().match([pattern], limits=[limit])[0].metadata_list]
    found: list[str] = []
    if not os.path.exists(folder):
        return found
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            try:
                os.path.getsize(path), os.path.getmtime(path)
            except OSError:
                continue
            found.append(path)
            if limit is not None and len(found) >= limit:
                return found
    return found


def files_starting(prefix: str) -> list[str]:
    """The files directly in a folder whose names start with the last part of `prefix`
    (what Beam's `FileSystems.match([prefix + "*"])` lists)."""
    if remote(prefix):
        return match(prefix + "*")
    folder, start = os.path.split(prefix)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [os.path.join(folder, n) for n in names if n.startswith(start) and os.path.isfile(os.path.join(folder, n))]
