"""A WADO-RS `multipart/related` response, split into its parts as it streams in.

Each part (one DICOM instance, as the archive stores it with `transfer-syntax=*`) is
written to its own file without the whole response ever being held in memory: a
series of thousands of full-size CT slices streams through a buffer of about one
read chunk plus the boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import IO

from .client import Retryable

HEADER_LIMIT = 64 * 1024  # a part's headers: a few lines; anything longer is not multipart


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart Content-Type header."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value:
            return value.strip().strip('"').encode()
    raise Retryable(f"expected a multipart/related response with a boundary, found {content_type.split(';')[0]!r}")


def split_parts(chunks: Iterable[bytes], boundary: bytes, open_part: Callable[[int], IO[bytes]]) -> int:
    """Writes each part's body to `open_part(i)` (closed here), returns the number of
    parts. A response that ends before its closing boundary raises Retryable: the
    connection was lost mid-series, and no part after the last complete one is kept."""
    delimiter = b"\r\n--" + boundary
    buffer = b"\r\n"  # the first delimiter has no CRLF before it
    stream = iter(chunks)
    parts = 0
    part: IO[bytes] | None = None
    in_headers = False
    for chunk in stream:
        buffer += chunk
        while True:
            if part is None and not in_headers:  # before a delimiter: preamble, or the epilogue
                at = buffer.find(delimiter)
                if at < 0:
                    buffer = buffer[-len(delimiter):]
                    break
                after = buffer[at + len(delimiter):]
                if len(after) < 2:
                    buffer = buffer[at:]
                    break
                if after[:2] == b"--":
                    return parts  # the closing delimiter: the epilogue is ignored
                buffer, in_headers = after, True
            if in_headers:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > HEADER_LIMIT:
                        raise Retryable("a part's headers never end: not a multipart response")
                    break
                buffer, in_headers = buffer[end + 4:], False
                part = open_part(parts)
            if part is not None:
                at = buffer.find(delimiter)
                if at < 0:  # keep a tail that may be the start of the delimiter
                    keep = len(delimiter) - 1
                    part.write(buffer[:-keep] if len(buffer) > keep else b"")
                    buffer = buffer[-keep:] if len(buffer) > keep else buffer
                    break
                part.write(buffer[:at])
                part.close()
                part, parts = None, parts + 1
                buffer = buffer[at:]
    if part is not None:
        part.close()
    raise Retryable("the response ended before its closing boundary (the connection was lost mid-series)")
