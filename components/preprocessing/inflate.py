"""A deflated data set inflated within a limit (untrusted input: a 1.4 MB file can
inflate to 1.5 GB).

The first `FIRST_CHUNK` bytes are inflated as kept; a data set that goes on past them is
first counted (inflated and dropped a megabyte at a time) and kept only when it ends
within the limit. Peak memory on a file past the limit stays near that of a normal file.
The result equals `zlib.decompress(data, -zlib.MAX_WBITS)`, dcmread's own call: bytes
after the end of the stream are ignored and a stream cut short raises zlib.error.
"""

from __future__ import annotations

import zlib
from typing import IO

from . import reasons
from .reasons import Rejected

DEFAULT_MAX_INFLATED_MB = 1024.0
FIRST_CHUNK = 16 << 20  # zlib joins its output blocks at the end: twice this is held for a moment
_STEP = 1 << 20
_HEAD = 4096
DEFLATED_UID = b"1.2.840.10008.1.2.1.99"


def limit_bytes(max_inflated_mb: float) -> int:
    return int(max_inflated_mb * 2**20)


def _over(limit: int) -> Rejected:
    return Rejected(reasons.INFLATE_LIMIT, f"the deflated data set inflates to more than {limit / 2**20:g} MB "
                    "(ingest.max_inflated_mb); expected a data set within it")


def inflate(data: bytes, limit: int) -> bytes:
    """Raw deflate -> bytes, at most `limit` of them; raises Rejected(INFLATE_LIMIT) past it."""
    stream = zlib.decompressobj(-zlib.MAX_WBITS)
    first = min(limit, FIRST_CHUNK)
    out = stream.decompress(data, first + 1)
    if len(out) > limit:
        raise _over(limit)
    if stream.eof:
        return out
    if len(out) <= first:  # all input consumed before the stream's end
        raise zlib.error("incomplete or truncated stream")
    tail = stream.unconsumed_tail
    _count(stream.copy(), tail, limit - len(out), limit)
    rest = stream.decompress(tail)
    if not stream.eof:
        raise zlib.error("incomplete or truncated stream")
    return out + rest


def _count(probe: zlib._Decompress, tail: bytes, budget: int, limit: int) -> None:
    """Inflates the rest a step at a time, keeping nothing; raises past `budget` bytes."""
    seen = 0
    while not probe.eof:
        chunk = probe.decompress(tail, _STEP)
        tail = probe.unconsumed_tail
        seen += len(chunk)
        if seen > budget:
            raise _over(limit)
        if not chunk and not tail:
            return  # cut short: the caller's own inflate raises for it


def check_deflated_file(fileobj: IO[bytes], limit: int) -> None:
    """Before dcmread reads a file: if its file meta names the deflated syntax, counts what
    its data set inflates to (dcmread would inflate it whole, unbounded), keeping nothing.
    The data set starts after the file meta group, whose length the group's first element
    gives; a file without it is left to dcmread."""
    fileobj.seek(0)
    head = fileobj.read(_HEAD)
    fileobj.seek(0)
    if head[128:132] != b"DICM" or DEFLATED_UID not in head or head[132:138] != b"\x02\x00\x00\x00UL":
        return
    fileobj.seek(144 + int.from_bytes(head[140:144], "little"))
    try:
        _count(zlib.decompressobj(-zlib.MAX_WBITS), fileobj.read(), limit, limit)
    except zlib.error:
        return  # not a deflate stream there: dcmread judges the file
    finally:
        fileobj.seek(0)
