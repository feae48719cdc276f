"""The header pass's parse of a plain DICOM file, without dcmread's general machinery.

`dcmread` reads every encoding DICOM has known: files without a preamble, command sets,
deflated or big-endian data sets, encodings that contradict their transfer syntax,
undefined lengths anywhere. Its generality costs about 0.6 ms a file, a sixth of what
reading and decoding a file costs. Most files of an archive are plain: a Part 10
preamble and file meta group, a little-endian transfer syntax (a deflated data set is
inflated whole first, as dcmread inflates it), and data elements of defined length in
ascending order (encapsulated Pixel Data aside). For those,
`plain_dataset` walks the elements itself and returns what
`dcmread(fileobj, defer_size=DEFER_BYTES)` returns for the header pass: the same raw
elements (tag, VR, length, value, where the value starts), the same file meta, the
same encoding; large values are skipped, not read (encapsulated Pixel Data, of undefined
length, is searched through for its end, as dcmread does). Whatever is not plain (and any
public element large enough to be deferred, which would need the file again) gives
None, and `dcmread` reads the file as before: every odd file takes pydicom's path, with
pydicom's warnings and errors. tests/components/preprocessing/test_plain_file.py holds
the two to the same elements on pydicom's own files, synthetic data and the fuzz corpus.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import IO, BinaryIO, cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileutil import read_undefined_length_value
from pydicom.tag import BaseTag, SequenceDelimiterTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, PrivateTransferSyntaxes
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from .inflate import DEFAULT_MAX_INFLATED_MB, inflate, limit_bytes

UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
PER_FRAME_GROUPS = 0x52009230  # deferred as dcmread defers it; read_header reads it where it is plain
CHARSET = 0x00080005
_VRS = {str(vr).encode(): str(vr) for vr in VR}
_LONG = {str(vr) for vr in EXPLICIT_VR_LENGTH_32}
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_ITEM = struct.Struct("<HHI")


class _NotPlain(Exception):
    """The file needs dcmread."""


def plain_dataset(fileobj: IO[bytes], defer_size: int,
                  max_inflated: int = limit_bytes(DEFAULT_MAX_INFLATED_MB)) -> tuple[Dataset, int | None] | None:
    """(the file's data set as dcmread reads it with `defer_size`, where its deflated
    stream starts in the file (None: not deflated)), or None when the file is not plain.
    Reads the header and what follows large values of defined length, not those values
    (native pixels); leaves the file's position anywhere. A deflated data set is inflated
    whole first, as dcmread inflates it (within `max_inflated` bytes, else Rejected
    INFLATE_LIMIT); its values' positions are in the inflated stream."""
    try:
        window = _Window(fileobj)
        if window.size < 140 or window.get(128, 4) != b"DICM":
            return None
        meta_elements, pos = _walk(window, 132, implicit=False, defer_size=None, group=2)
        meta = FileMetaDataset(meta_elements)
        meta.set_original_encoding(False, True, default_encoding)
        syntax = _syntax(meta_elements)
        deflated_at = None
        if syntax == DeflatedExplicitVRLittleEndian:
            window, deflated_at, pos = _inflated(window, pos, max_inflated), pos, 0
        implicit = syntax == ImplicitVRLittleEndian
        if pos + 6 > window.size or _looks_implicit(window.get(pos, 6)) != implicit:
            return None  # nothing after the meta, or an encoding pydicom would detect and switch
        elements, _ = _walk(window, pos, implicit=implicit, defer_size=defer_size, group=None,
                            inflated=deflated_at is not None)
    except (_NotPlain, OSError, ValueError, zlib.error):
        return None
    ds = Dataset(elements)
    ds.file_meta = meta
    ds.set_original_encoding(implicit, True, _character_set(ds))  # as dcmread ends
    return ds, deflated_at


def _character_set(ds: Dataset) -> str | list[str]:
    """The data set's encodings, as pydicom's `Dataset._character_set` gives them to
    dcmread (it converts Specific Character Set in place, as dcmread does)."""
    charset = ds.get(BaseTag(CHARSET), None)
    return convert_encodings(charset.value) if charset else default_encoding


def _inflated(window: _Window, start: int, limit: int) -> _Window:
    """The deflated data set from `start` on, inflated whole as dcmread inflates it, within `limit` bytes."""
    if window.get(start, 2) == b"\x00\x00":
        raise _NotPlain  # dcmread would read a command set (group 0000) from the compressed bytes
    window.file.seek(start)
    return _Window(io.BytesIO(inflate(window.file.read(), limit)))


class _Window:
    """Reads of a file through one buffer: the header in one read, large values skipped."""

    CHUNK = 16 << 10

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.file = fileobj
        self.size = fileobj.seek(0, io.SEEK_END)
        self.base, self.data = 0, b""

    def get(self, start: int, n: int) -> bytes:
        if start + n > self.size:
            raise _NotPlain  # runs past the end: dcmread decides what a truncated file is
        at = start - self.base
        if at < 0 or at + n > len(self.data):
            self.file.seek(start)
            self.base, self.data, at = start, self.file.read(max(n, self.CHUNK)), 0
            if len(self.data) < n:
                raise _NotPlain  # the file shrank under us
        return self.data[at:at + n]


def _syntax(meta: dict[BaseTag, DataElement | RawDataElement]) -> UID:
    """The transfer syntax, if its data set is little endian and read as it says."""
    raw = meta.get(BaseTag(0x00020010))
    if raw is None or not raw.value:
        raise _NotPlain
    syntax = UID(raw.value.decode("ascii", "replace").rstrip("\x00 ").strip())
    try:
        plain = syntax.is_transfer_syntax and syntax.is_little_endian
    except ValueError:  # a private UID: pydicom cannot tell its type
        plain = False
    if not plain or syntax in PrivateTransferSyntaxes:
        raise _NotPlain
    return syntax


def _looks_implicit(head: bytes) -> bool:
    """pydicom's test of the first element: a VR field outside 'A'-'Z' means implicit VR."""
    vr = head[4:6]
    return not (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)


def _walk(window: _Window, pos: int, *, implicit: bool, defer_size: int | None,
          group: int | None, inflated: bool = False) -> tuple[dict[BaseTag, DataElement | RawDataElement], int]:
    """The elements from `pos` on (of `group` only, when given), as pydicom's
    `data_element_generator` yields them; raises _NotPlain at anything it would treat
    specially. Returns them and where the walk stopped. In an `inflated` data set the
    per-frame functional groups are read, not deferred: a deferred read goes back to the
    file, whose bytes there are deflated."""
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    last = -1
    while pos < window.size:
        head = window.get(pos, 8)  # a partial element header at the end raises: pydicom ignores it silently
        g, e = _TAG.unpack_from(head)
        if group is not None and g != group:
            break
        tag = g << 16 | e
        if tag <= last or (group is None and g < 8) or g == 0xFFFE:
            raise _NotPlain  # out of order, a command set or stray group 2, an item tag
        last = tag
        if implicit:
            vr = None
            (length,) = _U32.unpack_from(head, 4)
            start = pos + 8
        else:
            vr = _VRS.get(head[4:6])
            if vr is None:
                raise _NotPlain  # pydicom guesses what an unknown VR means
            if vr in _LONG:
                (length,) = _U32.unpack(window.get(pos + 8, 4))
                start = pos + 12
            else:
                (length,) = _U16.unpack_from(head, 6)
                start = pos + 8
        if length == UNDEFINED:
            if tag != PIXEL_DATA or implicit:
                raise _NotPlain  # sequences of undefined length: pydicom parses them here
            value, pos = _encapsulated(window, start, defer_size)
        else:
            pos = start + length
            if pos > window.size:
                raise _NotPlain  # runs past the end: dcmread decides what a truncated file is
            if defer_size is not None and length > defer_size and tag != CHARSET and \
                    not (inflated and tag == PER_FRAME_GROUPS):
                if tag not in (PIXEL_DATA, PER_FRAME_GROUPS) and not g % 2:
                    raise _NotPlain  # a deferred public value is read again from the file on use
                value = None
            else:
                value = window.get(start, length) if length else cast(bytes | None, empty_value_for_VR(vr, raw=True))
        elements[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr, length, value, start, implicit, True)
    return elements, pos


def _encapsulated(window: _Window, start: int, defer_size: int | None) -> tuple[bytes | None, int]:
    """Encapsulated Pixel Data of undefined length, found by pydicom's own search for its
    delimiter (which reads through the fragments): its value and where it ends."""
    window.file.seek(start)
    try:
        value = read_undefined_length_value(cast(BinaryIO, window.file), True, SequenceDelimiterTag, defer_size)
    except EOFError:  # no delimiter: a truncated file, which dcmread judges
        raise _NotPlain from None
    return value, window.file.tell()


def sequence_items(value: bytes, implicit: bool) -> list[dict[BaseTag, DataElement | RawDataElement]] | None:
    """The items of a sequence value of defined length, little endian, as pydicom's
    `read_sequence` reads them (the same raw elements, positions aside), or
    None where an item is not plain: of undefined length, not an Item tag, with anything
    `_walk` declines (a nested sequence of undefined length among them), or bytes that
    are not a whole item."""
    items = []
    pos, end = 0, len(value)
    try:
        while pos < end:
            if pos + 8 > end:
                return None
            group, element, length = _ITEM.unpack_from(value, pos)
            if (group, element) != (0xFFFE, 0xE000) or length == UNDEFINED or pos + 8 + length > end:
                return None
            content = _Window(io.BytesIO(value[pos + 8:pos + 8 + length]))
            items.append(_walk(content, 0, implicit=implicit, defer_size=None, group=None)[0] if length else {})
            pos += 8 + length
    except (_NotPlain, OSError, ValueError, struct.error):
        return None
    return items
