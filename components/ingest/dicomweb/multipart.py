"""A WADO-RS `multipart/related` response, split into its parts as it streams in.

Each part (one DICOM instance, as the archive stores it with `transfer-syntax=*`) is
written to its own file without the whole response ever being held in memory: a
series of thousands of full-size CT slices streams through a buffer of about one
read chunk plus the boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from .client import Failed, Retryable

HEADER_LIMIT = 64 * 1024  # a part's headers: a few lines; anything longer is not multipart


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart Content-Type header."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value:
            return value.strip().strip('"').encode()
    kind = content_type.split(";")[0][:60]
    raise Retryable(f"expected a multipart/related response with a boundary, found {kind!r}", malformed=True)


class PartFile(Protocol):
    """Where one part's body goes: a file opened for writing."""

    def write(self, data: bytes, /) -> int: ...
    def close(self) -> None: ...


def split_parts(chunks: Iterable[bytes], boundary: bytes, open_part: Callable[[int], PartFile],
                max_part_bytes: int | None = None) -> int:
    """Writes each part's body to `open_part(i)` (closed here), returns the number of
    parts. A body that ends (the connection closed in order) before its closing boundary,
    or a part's headers that never end, raise Retryable(malformed); a part past
    `max_part_bytes` raises Failed (lasting: the archive's copy is too large); a lost
    connection is the Retryable that `chunks` raises."""
    delimiter = b"\r\n--" + boundary
    buffer = b"\r\n"  # the first delimiter has no CRLF before it
    stream = iter(chunks)
    parts = 0
    part: PartFile | None = None
    in_headers = False
    written = 0  # bytes of the current part
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
                        raise Retryable("a part's headers never end: not a multipart response", malformed=True)
                    break
                buffer, in_headers = buffer[end + 4:], False
                part, written = open_part(parts), 0
            if part is not None:
                at = buffer.find(delimiter)
                keep = len(delimiter) - 1
                body = buffer[:at] if at >= 0 else buffer[:-keep] if len(buffer) > keep else b""
                written += len(body)
                if max_part_bytes is not None and written > max_part_bytes:
                    part.close()
                    raise Failed(f"an instance larger than {max_part_bytes / 2**20:g} MB "
                                 "(ingest.dicomweb.max_instance_mb)", lasting=True)
                part.write(body)
                if at < 0:  # keep a tail that may be the start of the delimiter
                    buffer = buffer[-keep:] if len(buffer) > keep else buffer
                    break
                part.close()
                part, parts = None, parts + 1
                buffer = buffer[at:]
    if part is not None:
        part.close()
    raise Retryable("the multipart body ended without its closing boundary", malformed=True)
