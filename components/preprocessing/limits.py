"""What one input may cost before its pixels are decoded: the bounds ingest and
`medseq predict` apply alike (predict takes them from the model's own ingest config).

A file says how large its pixels are (Rows x Columns x Number of Frames x Samples per
Pixel x bytes) in a few bytes of header, and a codec allocates that much before it reads
a byte of pixel data: a 1.5 kB RLE file declaring 30000 x 30000 pixels costs a
gigabyte, a 6 kB JPEG-LS of zeros at 16000 x 16000 x 2 frames sixteen. So every file is
checked in the header pass against the pixel data it really holds and against
`ingest.max_decoded_mb`, and every series, before its frames are decoded, against the
same limit for the frames it keeps (as float32, repeats included): what is over it is
rejected with a reason at the memory of a normal file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...pipeline.config import IngestConfig
from . import reasons
from .reasons import Rejected

ITEM_HEADER_BYTES = 8  # an encapsulated fragment's (FFFE,E000) tag and length: every frame has one
FLOAT32_BYTES = 4  # the working type of the numeric preprocessing


@dataclass(frozen=True)
class InputLimits:
    """The bounds of one input file and one series; `ingest`'s settings of the same names."""

    max_inflated_mb: float = IngestConfig.max_inflated_mb
    max_decoded_mb: float = IngestConfig.max_decoded_mb
    decode_timeout_s: float | None = IngestConfig.decode_timeout_s

    @classmethod
    def of(cls, ingest: IngestConfig) -> InputLimits:
        return cls(ingest.max_inflated_mb, ingest.max_decoded_mb, ingest.decode_timeout_s)

    @classmethod
    def from_record(cls, ingest: dict[str, object]) -> InputLimits:
        """From the ingest section recorded in qc.json (a model's spec); defaults where absent."""
        def number(name: str, default: float) -> float:
            value = ingest.get(name)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

        return cls(number("max_inflated_mb", cls.max_inflated_mb), number("max_decoded_mb", cls.max_decoded_mb),
                   number("decode_timeout_s", cls.decode_timeout_s or 30.0))

    @property
    def max_inflated(self) -> int:
        return int(self.max_inflated_mb * 2**20)

    @property
    def max_decoded(self) -> int:
        return int(self.max_decoded_mb * 2**20)


DEFAULT_LIMITS = InputLimits()


def frame_bytes(rows: int, columns: int, samples: int, bits_allocated: int) -> int:
    """Bytes of one decoded frame as stored (1-bit pixels packed)."""
    pixels = rows * columns * samples
    return math.ceil(pixels / 8) if bits_allocated == 1 else pixels * math.ceil(max(bits_allocated, 8) / 8)


def _mb(nbytes: float) -> str:
    if nbytes < 2**20:
        return f"{nbytes:,.0f} bytes"
    return f"{nbytes / 2**20:,.1f} MB" if nbytes < 2**40 else f"{nbytes / 2**40:,.1f} TB"


def check_file(rows: int, columns: int, samples: int, bits_allocated: int, frames: int, pixel_length: int | None,
               encapsulated: bool, file_size: int | None, max_decoded: int) -> None:
    """A file's declared pixels against the Pixel Data it holds and `max_decoded` bytes;
    raises Rejected (TRUNCATED, DECODED_SIZE_LIMIT). `pixel_length`: the Pixel Data
    element's length when defined (native pixels), None when not known."""
    one = frame_bytes(rows, columns, samples, bits_allocated)
    declared = one * frames
    what = f"Number of Frames ({frames:,}) x Rows ({rows}) x Columns ({columns}) x Samples per Pixel ({samples})"
    if not encapsulated and pixel_length is not None and declared > pixel_length + 1:  # +1: odd lengths padded
        raise Rejected(reasons.TRUNCATED, f"{what} at {bits_allocated} bits needs {_mb(declared)} of Pixel Data, "
                       f"the file holds {_mb(pixel_length)}; expected a Number of Frames the pixel data holds")
    if encapsulated and file_size is not None and frames * ITEM_HEADER_BYTES > file_size:
        raise Rejected(reasons.TRUNCATED, f"Number of Frames ({frames:,}) needs at least one fragment of compressed "
                       f"pixel data a frame, more than the {file_size:,} bytes of the file hold")
    if declared > max_decoded:
        raise Rejected(reasons.DECODED_SIZE_LIMIT, f"{what} decode to {_mb(declared)}, more than "
                       f"ingest.max_decoded_mb ({max_decoded / 2**20:g} MB); expected smaller images, or raise "
                       "the limit")


def check_series(frames: int, rows: int, columns: int, samples: int, max_decoded: int) -> None:
    """The frames a series keeps (repeats included), as the float32 the preprocessing
    holds, against `max_decoded` bytes; raises Rejected(DECODED_SIZE_LIMIT)."""
    working = frames * rows * columns * samples * FLOAT32_BYTES
    if working > max_decoded:
        raise Rejected(reasons.DECODED_SIZE_LIMIT, f"the {frames} frames kept of {rows} x {columns} pixels "
                       f"({samples} sample(s)) take {_mb(working)} as float32, more than ingest.max_decoded_mb "
                       f"({max_decoded / 2**20:g} MB); expected smaller images, fewer frames "
                       "(preprocess.frames), or a higher limit")
