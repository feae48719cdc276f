"""One job at a time per output folder, and no staging left behind by killed jobs.

A job holds `OUT/.medseq.lock` (created exclusively, holding its pid) while it runs. A
second job into the same folder is refused with a message naming the first; a lock
whose process is gone (a killed job) is taken over, and the staging and trash folders
such jobs left in OUT are removed. Local folders only: object stores have no exclusive
create, so there the caller must not run two jobs into one output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ...pipeline.errors import InputError
from ...pipeline.processes import alive

LOCK_FILE = ".medseq.lock"
LEFTOVER_PREFIXES = (".medseq-staging-", ".medseq-old-")


def _holder(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _acquire(lock: Path) -> None:
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _holder(lock)
            if pid is not None and pid != os.getpid() and alive(pid):
                raise InputError(f"another medseq job (pid {pid}) is writing into {lock.parent}; expected one job "
                                 f"per output folder: wait for it, or remove {lock} if that process is gone") from None
            lock.unlink(missing_ok=True)  # left by a killed job
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return
    raise InputError(f"{lock}: could not take the output lock; another job keeps taking it")


def sweep_leftovers(out: Path) -> list[str]:
    """Removes the staging and trash folders of jobs that were killed (call with the lock held)."""
    removed = []
    for path in out.iterdir():
        if path.name.startswith(LEFTOVER_PREFIXES) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


@contextlib.contextmanager
def output_lock(out: str) -> Iterator[None]:
    """Holds OUT/.medseq.lock for the body (local folders; elsewhere a no-op)."""
    if "://" in out:
        yield
        return
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out} ({exc.strerror or type(exc).__name__}); "
                         "expected a writable folder") from None
    lock = folder / LOCK_FILE
    try:
        _acquire(lock)
    except PermissionError:
        raise InputError(f"cannot write into the output folder {out} (permission denied); expected a writable "
                         "folder") from None
    try:
        sweep_leftovers(folder)
        yield
    finally:
        if _holder(lock) == os.getpid():
            lock.unlink(missing_ok=True)
