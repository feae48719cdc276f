"""tf.train.Example and TFRecord encoding without importing TensorFlow.

Ingest workers stay light (no TensorFlow start-up, no TF memory per worker); the
bytes are the standard wire formats, which a test checks against
`tf.train.Example.FromString` and `tf.data.TFRecordDataset`.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO

import google_crc32c
import numpy as np

COMPRESS_LEVEL = 1


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(value: bytes | Sequence[bytes] | Sequence[int] | Sequence[float] | np.ndarray) -> bytes:
    if isinstance(value, bytes):
        value = [value]
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" or (
            not isinstance(value, np.ndarray) and value and isinstance(value[0], float)):
        packed = np.asarray(value, "<f4").tobytes()
        return _field(2, _field(1, packed))  # FloatList
    if value and isinstance(value[0], (bytes, bytearray)):
        return _field(1, b"".join(_field(1, bytes(v)) for v in value))  # type: ignore[arg-type]  # BytesList
    packed = b"".join(_varint(int(v)) for v in value)
    return _field(3, _field(1, packed))  # Int64List


def encode_example(features: Mapping[str, bytes | Sequence[bytes] | Sequence[int] | Sequence[float] | np.ndarray],
                   ) -> bytes:
    """Serializes a tf.train.Example; keys in sorted order so the bytes are deterministic."""
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _feature(features[key]))) for key in sorted(features)
    )
    return _field(1, entries)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecords(fileobj: IO[bytes], records: Iterable[bytes]) -> int:
    """Writes gzip TFRecord framing (length, masked CRC32C, data, masked CRC32C).

    The gzip header carries no name and mtime 0, so equal records give equal bytes.
    Level 1, not zlib's default 6 (TensorFlow's writer): on the benchmark's records it
    compresses 3x faster (73 against 24 MB/s) into files 2 % larger (0.672 against 0.659
    of the records); decompressing them takes 1.05x as long.
    """
    count = 0
    with gzip.GzipFile(fileobj=fileobj, mode="wb", mtime=0, filename="", compresslevel=COMPRESS_LEVEL) as out:
        for record in records:
            length = struct.pack("<Q", len(record))
            out.write(length + struct.pack("<I", _masked_crc(length)) + record
                      + struct.pack("<I", _masked_crc(record)))
            count += 1
    return count


def read_tfrecords(fileobj: IO[bytes]) -> Iterator[bytes]:
    """The records of a gzip TFRecord file, each checked against its CRCs (what
    `write_tfrecords` and TensorFlow's writer write)."""
    with gzip.GzipFile(fileobj=fileobj, mode="rb") as data:
        while True:
            head = data.read(12)
            if not head:
                return
            if len(head) < 12:
                raise ValueError("a TFRecord file ends inside a record's length")
            length, length_crc = struct.unpack("<QI", head)
            if length_crc != _masked_crc(head[:8]):
                raise ValueError("a TFRecord length fails its CRC: the file is corrupt")
            record, tail = data.read(length), data.read(4)
            if len(record) < length or len(tail) < 4 or struct.unpack("<I", tail)[0] != _masked_crc(record):
                raise ValueError("a TFRecord fails its CRC or ends early: the file is corrupt or truncated")
            yield record
