"""Process-level helpers: whether a process of this host still runs (how a lock or
staging folder left by a killed job is told from one in use), and malloc's arenas."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        return True
    return True


def fewer_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads malloc arenas of their own (up to 8 per core), each keeping the
    memory freed in it, so a Beam runner's threads and workers grow with the work done. Two
    arenas took 30-50 MB off each process of `medseq convert` at no measured speed cost.
    For this process and the processes it starts; called by commands that only convert
    (not by `medseq run`, whose TensorFlow threads allocate in parallel)."""
    os.environ.setdefault("MALLOC_ARENA_MAX", str(arenas))  # a user's own setting wins
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, int(os.environ["MALLOC_ARENA_MAX"]))
    except (OSError, AttributeError, ValueError):
        pass  # not glibc, or not a number: malloc stays as it is
