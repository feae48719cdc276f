"""Files on any filesystem, for every stage: local paths through the standard library,
any other filesystem (gs://, s3://, hdfs://...) through Beam's `FileSystems`, imported
only then. `remote(path)` is the one test of "is this path on another filesystem", and
`absolute(path)` the one way a path given by a user is made absolute.

Importing Beam costs about 2 s of a one-series convert's 3.5 s on 2 cores (`python -X
importtime`), and a small local input runs in-process without a pipeline
(`ingest/in_process.py`): that run imports no Beam at all. Local paths behave as Beam's
`LocalFileSystem` makes them behave (files read and written as stored, parent folders
made on create, folders deleted whole), so both runs write the same bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from typing import IO, Any


def remote(path: str) -> bool:
    """A path on a filesystem of Beam's (gs://bucket/..., s3://...), not a local one."""
    return "://" in path


def absolute(path: str) -> str:
    """A local path made absolute (workers may run elsewhere); a URI as given."""
    return path if remote(path) else os.path.abspath(path)


@contextlib.contextmanager
def filesystem_options(beam_args: Sequence[str], *paths: str) -> Iterator[None]:
    """Beam's filesystems configured by `beam_args` (an S3 endpoint and keys, a GCP
    project...) for what the driver itself reads and writes in the block: labels, the
    output's side files. A pipeline sets them for its own run only; without them Beam's
    S3 filesystem cannot even open a file. Restored afterwards; nothing when every
    path is local."""
    if not any(remote(p) for p in paths):
        yield
        return
    filesystems = _beam()
    before = filesystems._pipeline_options  # Beam's class-level setting (apache-beam 2.77)
    use_options(beam_args)
    try:
        yield
    finally:
        filesystems.set_options(before)


def use_options(beam_args: Sequence[str]) -> None:
    """Beam's filesystems in this process configured by `beam_args` (a DoFn's setup in a
    worker, or `filesystem_options` in the driver)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    _beam().set_options(PipelineOptions(list(beam_args)))


def _beam() -> Any:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _uncompressed() -> Any:
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


_S3IO: dict[int, tuple[Any, Any]] = {}  # id(options) -> (the options, kept so the id stays theirs; S3IO)


def _s3io() -> Any:
    """One Beam S3IO (one boto3 client) per process and options. Beam's S3 filesystem
    makes a new S3IO, and so a new boto3 client, for every file it opens: 0.19 s of CPU
    each here, 30x the read of a 6 kB file from a local S3 service."""
    from apache_beam.io.aws.s3io import S3IO

    options = _beam()._pipeline_options  # what filesystem_options and a worker's setup set
    found = _S3IO.get(id(options))
    if found is None:
        _S3IO.clear()
        found = _S3IO[id(options)] = (options, S3IO(options=options))
    return found[1]


class NotRegularFile(OSError):
    """A local path that is no regular file (a FIFO, a socket, a device, a folder): it is
    never read, as reading one blocks for ever (a FIFO) or never ends (/dev/zero)."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", path)
        self.kind = kind


def file_kind(mode: int) -> str:
    """What a stat mode names, in words."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def open_regular(path: str) -> IO[bytes]:
    """A local regular file opened for reading; anything else raises NotRegularFile
    without being opened for reading. Checked before the open (opening a device can act
    on it) and again on the open descriptor (the path may change in between); the open
    itself does not wait for a FIFO's writer."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(path, file_kind(mode))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket put in its place
            raise NotRegularFile(path, "a socket") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, file_kind(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_binary(path: str) -> IO[bytes]:
    """A file read as stored (no decompression by extension); a local one only if it is
    a regular file (`open_regular`)."""
    if path.startswith("s3://"):
        return _s3io().open(path, "r", read_buffer_size=1 << 20)  # type: ignore[no-any-return]
    if remote(path):
        return _beam().open(path, compression_type=_uncompressed())
    return open_regular(path)


def create(path: str) -> IO[bytes]:
    """A new file written as given; local parent folders are made."""
    if path.startswith("s3://"):
        return _s3io().open(path, "w")  # type: ignore[no-any-return]
    if remote(path):
        return _beam().create(path, compression_type=_uncompressed())
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    return open(path, "wb")


def join(base: str, *parts: str) -> str:
    return _beam().join(base, *parts) if remote(base) else os.path.join(base, *parts)


def exists(path: str) -> bool:
    """A file or folder; on an object store an object, or a prefix with objects under it."""
    if not remote(path):
        return os.path.exists(path)
    return bool(_object_exists(path) or _under(path, limit=1))


def _object_exists(path: str) -> bool:
    return bool(_s3io().exists(path) if path.startswith("s3://") else _beam().exists(path))


def _failed(results: list[tuple[Any, ...]]) -> None:
    """S3IO's batch calls answer (..., exception) per object instead of raising."""
    for *_, error in results:
        if error is not None:
            raise error


def _listing(pattern: str, limit: int | None = None) -> list[tuple[str, int]]:
    """(path, size) of every object a glob matches, as Beam's `FileSystems.match` matches
    them; on s3:// through this process's one S3IO (Beam's S3 filesystem makes a boto3
    client for every call: 56 of them, 10.6 s of a 26 s convert's driver, before)."""
    if not pattern.startswith("s3://"):
        return [(m.path, m.size_in_bytes) for m in _beam().match([pattern], limits=[limit])[0].metadata_list]
    from apache_beam.io.filesystem import FileSystem

    if pattern.endswith("/"):
        pattern += "*"
    prefix = re.match(r"^[^[*?]*", pattern).group(0)  # type: ignore[union-attr]
    if prefix == pattern:
        return [(pattern, _s3io().size(pattern))] if _s3io().exists(pattern) else []
    wanted = re.compile(FileSystem.translate_pattern(pattern))
    found = []
    for path, size in sorted(_s3io().list_files(prefix)):
        if wanted.match(path):
            found.append((path, size))
            if limit is not None and len(found) >= limit:
                break
    return found


def mkdirs(path: str) -> None:
    _beam().mkdirs(path) if remote(path) else os.makedirs(path)


def _under(folder: str, limit: int | None = None) -> list[str]:
    """The objects whose names start with `folder/` (an object store has no folders)."""
    return match(folder.rstrip("/") + "/**", limit)


def _gcs() -> Any:
    """Beam's GcsIO with the options in force: its one-object calls, where Beam's GCS
    filesystem sends batch requests (a handful of objects is all medseq moves; GCS
    emulators such as fake-gcs-server have no batch API)."""
    from apache_beam.io.gcp.gcsio import GcsIO

    return GcsIO(pipeline_options=_beam()._pipeline_options)


def _rename(sources: list[str], targets: list[str]) -> None:
    if sources and sources[0].startswith("s3://"):
        _failed(_s3io().rename_files(list(zip(sources, targets, strict=True))))
    elif sources and sources[0].startswith("gs://"):
        gcs = _gcs()
        for source, target in zip(sources, targets, strict=True):
            gcs.rename(source, target)
    else:
        _beam().rename(sources, targets)


def rename(source: str, target: str) -> None:
    """A file or a folder. On an object store a folder is the objects under its prefix,
    each copied and deleted (Beam's S3 filesystem renames objects, not prefixes)."""
    if not remote(source):
        os.rename(source, target)
    elif _object_exists(source):
        _rename([source], [target])
    else:
        found = _under(source)
        prefix = source.rstrip("/") + "/"
        if found:
            _rename(found, [target.rstrip("/") + "/" + f[len(prefix):] for f in found])


def delete(paths: list[str]) -> None:
    """Files, and folders with everything in them."""
    for path in paths:
        if remote(path):
            found = [path] if _object_exists(path) else _under(path)
            if found and path.startswith("s3://"):
                _failed(_s3io().delete_files(found))
            elif found and path.startswith("gs://"):
                gcs = _gcs()
                for name in found:
                    gcs.delete(name)
            elif found:
                _beam().delete(found)
        elif os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def match(pattern: str, limit: int | None = None) -> list[str]:
    """The files a glob matches, as Beam's `FileSystems.match` lists them. A local
    folder's `folder/**` is every file os.walk finds under it (links to folders not
    followed; files that vanish or dangle skipped, as Beam's `LocalFileSystem` skips
    them), and every folder under it that cannot be listed (so that the job names it
    instead of skipping its files without a word); any other pattern is Beam's to match."""
    folder = pattern[:-3] if pattern.endswith("/**") else None
    if folder is None or remote(pattern) or any(ch in folder for ch in "*?["):
        return [path for path, _ in _listing(pattern, limit)]
    found: list[str] = []
    if not os.path.exists(folder):
        return found
    unlisted: list[OSError] = []  # os.walk's errors: the folders it could not list
    for parent, _, names in os.walk(folder, onerror=unlisted.append):
        found.extend(str(e.filename) for e in unlisted if e.filename)
        unlisted.clear()
        for name in names:
            path = os.path.join(parent, name)
            try:
                os.path.getsize(path), os.path.getmtime(path)
            except OSError:
                continue
            found.append(path)
            if limit is not None and len(found) >= limit:
                return found
    found.extend(str(e.filename) for e in unlisted if e.filename)
    return found if limit is None else found[:limit]


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


def read_lines(prefix: str) -> list[str]:
    """The non-empty lines of every file `files_starting(prefix)` lists, sorted."""
    lines: list[str] = []
    for path in files_starting(prefix):
        with open_binary(path) as f:
            lines.extend(line for line in f.read().decode().splitlines() if line)
    return sorted(lines)


def local_copy(folder: str, into: str, only: Sequence[str] = ()) -> str:
    """`folder`'s files (those whose relative path starts with one of `only`, when given)
    copied below the local folder `into` (kept while every file's name and size still
    match: a rerun copies nothing), or `folder` itself when local. For readers that have
    no filesystem of Beam's: TensorFlow 2.21 has no s3://."""
    if not remote(folder):
        return folder
    prefix = folder.rstrip("/") + "/"
    listed = [(path, size) for path, size in _listing(prefix + "**")
              if not only or path[len(prefix):].startswith(tuple(only))]
    sources = {path[len(prefix):]: path for path, _ in listed}
    wanted = {path[len(prefix):]: size for path, size in listed}
    have = {os.path.relpath(os.path.join(p, n), into): os.path.getsize(os.path.join(p, n))
            for p, _, names in os.walk(into) for n in names} if os.path.isdir(into) else {}
    if have == wanted:
        return into
    staging = into.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    for name, path in sources.items():
        target = os.path.join(staging, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open_binary(path) as source, open(target, "wb") as f:
            shutil.copyfileobj(source, f, 1 << 20)
    shutil.rmtree(into, ignore_errors=True)
    os.rename(staging, into)
    return into
