"""medseq writes only into folders it owns, one job at a time, and leaves no staging
behind.

Ownership. An output folder is medseq's when medseq made it, found it empty, or finds
its marker file (`OUT/.medseq`, written when it first writes there; on an object store,
where a marker would be one more object among the outputs, when it holds only the names
the stage writes). A folder
that holds anything else (a source tree, `--out .`, a user's own `test/` folder) is
refused in one line before anything is written, so no file of the user's is ever
replaced or deleted; inside its own folder medseq replaces only the names it writes,
and leaves any other file there alone.

Locking. A job holds `OUT/.medseq.lock` (its pid, made whole and then linked into
place, so it never exists empty) while it runs. A second job into the same folder is
refused with a message naming the first; a lock whose process is gone (a killed job) is
taken over, and the staging and trash folders such jobs left in OUT are removed. Local
folders only: object stores have no exclusive create, so there the caller must not run
two jobs into one output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ...pipeline import __version__
from ...pipeline.errors import InputError
from ...pipeline.processes import alive
from . import storage

LOCK_FILE = ".medseq.lock"
MARKER = ".medseq"  # in every folder medseq writes: its presence says the folder is medseq's
LEFTOVER_PREFIXES = (".medseq-staging-", ".medseq-old-")
_OWN = (LOCK_FILE, MARKER)
_LOCK_WRITE_GRACE_S = 10.0  # an unreadable lock younger than this may still be being written (by another tool)


def _holder(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _stale(lock: Path) -> bool:
    """A lock no live job holds: its process is gone, or it holds no pid and is not new."""
    pid = _holder(lock)
    if pid is not None:
        return pid != os.getpid() and not alive(pid)
    try:
        return time.time() - lock.stat().st_mtime > _LOCK_WRITE_GRACE_S
    except FileNotFoundError:
        return True


def _acquire(lock: Path) -> None:
    """The lock made whole under another name, then linked into place: `link` fails if
    the lock exists, and no reader ever sees it without its pid."""
    pending = lock.with_name(f"{LOCK_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    pending.write_text(f"{os.getpid()}\n")
    try:
        for _ in range(3):
            try:
                os.link(pending, lock)
                return
            except FileExistsError:
                if not _stale(lock):
                    pid = _holder(lock)
                    who = f"pid {pid}" if pid is not None else "a job starting now"
                    raise InputError(f"another medseq job ({who}) is writing into {lock.parent}; expected one job "
                                     f"per output folder: wait for it, or remove {lock} if that process is gone"
                                     ) from None
                lock.unlink(missing_ok=True)  # left by a killed job
        raise InputError(f"{lock}: could not take the output lock; another job keeps taking it")
    finally:
        pending.unlink(missing_ok=True)


def sweep_leftovers(out: Path) -> list[str]:
    """Removes the staging and trash folders of jobs that were killed (call with the lock held)."""
    removed = []
    for path in out.iterdir():
        if path.name.startswith(LEFTOVER_PREFIXES) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        elif path.name.startswith(f"{LOCK_FILE}.") and path.is_file():  # a killed job's pending lock
            pid = path.name.split(".")[3] if path.name.count(".") >= 3 else ""
            if not pid.isdigit() or not alive(int(pid)):
                path.unlink(missing_ok=True)
    return removed


def _foreign(names: list[str]) -> list[str]:
    return [n for n in names if n not in _OWN and not n.startswith(LEFTOVER_PREFIXES)
            and not n.startswith(f"{LOCK_FILE}.")]


def _refuse(out: str, foreign: int, what: str) -> InputError:
    # The count only: the names in a user's folder are theirs (and may name patients).
    return InputError(f"{out} holds {foreign} file(s) or folder(s) medseq did not write; expected a new or empty "
                      f"folder for the {what}, or one medseq wrote before (it holds {MARKER}): choose another "
                      f"output folder (medseq never replaces or deletes what it did not write)")


def claim(out: str, what: str, names: tuple[str, ...] = ()) -> None:
    """Makes `out` a medseq output folder, or refuses (InputError) when it holds anything
    medseq did not write; `what` names the output in the message ("ingest output").

    On an object store, where a folder is a prefix and a marker would be one more object
    beside the outputs, a prefix is accepted when every name under it is one of `names`
    (the names this stage writes there) or one of medseq's own staging names."""
    if storage.remote(out):
        prefix = out.rstrip("/") + "/"
        found = {p[len(prefix):].split("/", 1)[0] for p in storage.match(prefix + "**", limit=1000)}
        foreign = [n for n in _foreign(sorted(found)) if n not in names]
        if foreign:
            raise _refuse(out, len(foreign), what)
        return
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{out} is a file; expected a folder for the {what}")
    if folder.is_dir() and not (folder / MARKER).exists():
        try:
            foreign = _foreign(os.listdir(folder))
        except OSError as exc:
            raise InputError(f"cannot list the output folder {out} ({exc.strerror or type(exc).__name__}); "
                             "expected a folder medseq may read and write") from None
        if foreign:
            raise _refuse(out, len(foreign), what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / MARKER).exists():
            (folder / MARKER).write_text(json.dumps({"written_by": f"medseq {__version__}", "output": what}) + "\n")
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out} ({exc.strerror or type(exc).__name__}); "
                         "expected a writable folder") from None


@contextlib.contextmanager
def output_lock(out: str, what: str | None = None, names: tuple[str, ...] = ()) -> Iterator[None]:
    """Holds OUT/.medseq.lock for the body (local folders; elsewhere a no-op), after
    `claim(out, what, names)` when `what` is given (a folder of medseq's own, such as its
    DICOMweb cache, gives None)."""
    if what is not None:
        claim(out, what, names)
    if storage.remote(out):
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
