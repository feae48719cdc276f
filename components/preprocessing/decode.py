"""Pixel pass: decode the ordered frames of a series and apply the modality LUT.

The result is a float32 volume in modality units (Hounsfield units for CT) plus the
header values the numeric preprocessing needs (`SeriesMeta`), nothing else.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, JPEGLSNearLossless, RLELossless

from ...pipeline import features as F
from . import reasons
from .enhanced import frame_rescales
from .geometry import OrderedSeries
from .headers import (
    UNDEFINED_LENGTH,
    FileHeader,
    header_window,
    max_value,
    read_dataset,
)
from .quiet import quiet_pydicom
from .reasons import Rejected

# The pixel pass runs one worker per core, so a codec's CPU time is what counts, not its
# wall time. CPU a frame, measured here on the benchmark's 192-256 px 12-bit frames
# (pydicom's default first): JPEG-LS GDCM 1.4 ms, pyjpegls 0.85 ms; RLE pydicom 1.3 ms,
# pylibjpeg-rle 0.17 ms; lossless JPEG 2000 GDCM 8.2 ms (5.0 ms of wall: it runs threads
# of its own, quicker only while a core is idle), OpenJPEG through pylibjpeg 6.7 ms. Each
# of these decodes is exactly specified (integer arithmetic): any correct decoder gives the
# same values, which test_pixel_ref.py checks on pydicom's files.
# The whole-file path, where any failure here falls back, keeps pydicom's own order.
_PREFERRED_PLUGIN: dict[str, str] = {str(JPEGLSLossless): "pyjpegls", str(JPEGLSNearLossless): "pyjpegls",
                                     str(RLELossless): "pylibjpeg", str(JPEG2000Lossless): "pylibjpeg"}


@dataclass(frozen=True)
class SeriesMeta:
    """The header values the numeric preprocessing reads."""

    modality: str
    photometric: str
    rgb: bool
    window: tuple[float, float] | None  # the series' own VOI window (center, width)
    pixel_spacing: tuple[float, float] | None
    interval: float  # mm between slices or ms between frames; 0 when unknown
    max_value: float  # of the stored range, for RGB scaling
    axis: str = F.AXIS_INDEX  # what the frames step through: time, space (slices) or index only


def _plugin(transfer_syntax: str) -> str:
    plugin = _PREFERRED_PLUGIN.get(transfer_syntax, "")
    return plugin if plugin and plugin in get_decoder(transfer_syntax).available_plugins else ""


def syntax_name(transfer_syntax: str) -> str:
    """A transfer syntax's name in DICOM's dictionary; never the UID's own text (a
    private one is anybody's string, and rejection messages copy nothing from a file)."""
    name = UID(transfer_syntax).name
    return name if name and name != str(transfer_syntax) else "a transfer syntax outside DICOM's dictionary"


@contextlib.contextmanager
def _decoding(transfer_syntax: str, bits: Callable[[], object]) -> Iterator[None]:
    """Codec failures as reasons: codecs raise anything on corrupt data, Rust panics included."""
    try:
        yield
    except BaseException as exc:
        if reasons.must_propagate(exc):
            raise
        syntax = syntax_name(transfer_syntax)
        text = str(exc).lower()
        if isinstance(exc, NotImplementedError) or "does not support" in text or "no pixel data decoders" in text:
            raise Rejected(reasons.UNSUPPORTED_TRANSFER_SYNTAX, f"no installed, permissively licensed decoder "
                           f"handles {syntax} with {bits()}-bit samples") from None
        raise Rejected(reasons.DECODE_ERROR, f"the pixel data ({syntax}) cannot be decoded "
                       f"({type(exc).__name__}); truncated or corrupt") from None


def _to_modality(pixels: np.ndarray, header: FileHeader, rescale: tuple[tuple[float, float], ...],
                 per_frame: bool) -> np.ndarray:
    """Decoded stored values (F, H, W[, 3]) -> float32 modality units, as `apply_modality_lut`
    computes them (float64 products, then float32)."""
    if is_colour(header):
        return pixels.astype(np.float32)
    if per_frame:
        out = np.empty(pixels.shape, np.float32)
        for i in range(pixels.shape[0]):
            slope, intercept = rescale[i]
            out[i] = pixels[i] * slope + intercept
        return out
    if rescale:
        (slope, intercept), = rescale
        scaled = pixels.astype(np.float64) * slope
        scaled += intercept
        return np.asarray(scaled, dtype=np.float32)
    return np.asarray(pixels, dtype=np.float32)


def _frames_from_ref(fileobj: IO[bytes], header: FileHeader, indices: list[int] | None = None) -> np.ndarray:
    """The frames `indices` (sorted; None: all) of one file, from the bytes its PixelRef
    points at (no second parse). Compressed frames not asked for are not decoded."""
    ref = header.pixels
    if ref is None:
        raise ValueError("no PixelRef")
    if ref.inflate_from is not None:  # deflated (native pixels): inflated as far as they end
        fileobj.seek(ref.inflate_from)
        stream = zlib.decompressobj(-zlib.MAX_WBITS).decompress(fileobj.read(), ref.offset + ref.length)
        data = stream[ref.offset:]
    elif ref.length == UNDEFINED_LENGTH:  # encapsulated: its items end at the sequence delimiter
        fileobj.seek(ref.offset)
        data = fileobj.read()
    else:
        fileobj.seek(ref.offset)
        data = fileobj.read(ref.length)
    if ref.length != UNDEFINED_LENGTH and len(data) != ref.length:
        raise EOFError("the file is shorter than when its header was read")
    decoder = get_decoder(header.transfer_syntax)
    options = {"validate": True, "decoding_plugin": _plugin(header.transfer_syntax), **dict(ref.options)}
    n_frames = len(header.frames)
    indices = list(range(n_frames)) if indices is None else indices
    if UID(header.transfer_syntax).is_encapsulated and len(indices) < n_frames:  # only the frames kept
        pixels = np.stack([frame for frame, _ in decoder.iter_array(data, indices=indices, **options)])
        picked = pixels
    else:  # native pixels are one read; or every frame is kept
        pixels = decoder.as_array(data, **options)[0]
        if pixels.ndim == (3 if is_colour(header) else 2):
            pixels = pixels[None]
        if pixels.shape[0] != n_frames:
            raise ValueError("frames decoded differ from the frames the header counts")
        picked = pixels if indices == list(range(n_frames)) else pixels[indices]
    if ref.per_frame and len(ref.rescale) != n_frames:
        raise ValueError("frames decoded differ from the frames the header counts")
    rescale = tuple(ref.rescale[i] for i in indices) if ref.per_frame else ref.rescale
    return _to_modality(picked, header, rescale, ref.per_frame)


def _frames_of(ds: Dataset, header: FileHeader) -> np.ndarray:
    """All frames of one file, (F, H, W[, 3]) float32 in modality units, from its data set."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    with _decoding(syntax, lambda: ds.get("BitsStored", "?")):
        pixels = ds.pixel_array  # pydicom's order: the first installed decoder that succeeds
    if header.photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)  # indices -> RGB through the palette
    if pixels.ndim == (3 if is_colour(header) else 2):
        pixels = pixels[None]
    if is_colour(header):
        return _to_modality(pixels, header, (), False)
    if header.multiframe and (rescale := frame_rescales(ds, pixels.shape[0])) is not None:
        return _to_modality(pixels, header, rescale, True)
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)


def is_colour(header: FileHeader) -> bool:
    return header.samples_per_pixel == 3 or header.photometric == "PALETTE COLOR"


@quiet_pydicom
def load_series(ordered: OrderedSeries, headers: dict[str, FileHeader], open_file: Callable[[str], IO[bytes]],
                decode_timeout_s: float | None = None) -> tuple[np.ndarray, SeriesMeta]:
    """Decodes the frames of `ordered` (each file once, only the frames it names) and
    stacks them in that order. A file that takes longer than `decode_timeout_s` is
    rejected (decode_timeout)."""
    wanted: dict[str, list[int]] = {}
    for f in ordered.frames:
        wanted.setdefault(f.path, []).append(f.frame)
    by_path: dict[str, dict[int, np.ndarray]] = {}
    first: tuple[tuple[float, float] | None, float] | None = None  # (window, max value) of the first file
    for path, frame_numbers in wanted.items():
        header = headers[path]
        indices = sorted(set(frame_numbers))
        started = time.monotonic()
        frames, ds = _decode_file(path, header, open_file, indices)
        took = time.monotonic() - started
        if decode_timeout_s is not None and took > decode_timeout_s:
            raise Rejected(reasons.DECODE_TIMEOUT, f"decoding one file took {took:.3g} s, expected at most "
                           f"{decode_timeout_s:g} s (ingest.decode_timeout_s)")
        by_path[path] = dict(zip(indices, frames, strict=True))
        if first is None:
            if ds is not None:
                with _values_needed_for_the_pixels():
                    first = header_window(ds), max_value(ds, header.photometric)
            elif header.pixels is not None:  # decoded from its PixelRef
                first = header.pixels.window, header.pixels.max_value
    if first is None:
        raise Rejected(reasons.NO_PIXEL_DATA, "the series holds no frames")
    volume = np.stack([by_path[f.path][f.frame] for f in ordered.frames])
    header = headers[ordered.frames[0].path]
    return volume, SeriesMeta(modality=header.modality, photometric=header.photometric, rgb=is_colour(header),
                              window=first[0], pixel_spacing=header.pixel_spacing, interval=ordered.interval,
                              max_value=first[1], axis=ordered.axis)


def _decode_file(path: str, header: FileHeader, open_file: Callable[[str], IO[bytes]],
                 indices: list[int] | None = None) -> tuple[np.ndarray, Dataset | None]:
    """(the frames `indices` (sorted; None: all) of the file, the data set when the whole file had to be
    parsed). From the header pass's PixelRef where there is one; any failure there goes
    the whole-file way, which finds and names the problem exactly as if there were no
    PixelRef."""
    if header.pixels is not None:
        try:
            with open_file(path) as fileobj:
                return _frames_from_ref(fileobj, header, indices), None
        except BaseException as exc:
            if reasons.must_propagate(exc):
                raise
    with open_file(path) as fileobj:
        ds = read_dataset(fileobj, path, stop_before_pixels=False)
    with _values_needed_for_the_pixels():
        frames = _frames_of(ds, header)
    indices = list(range(frames.shape[0])) if indices is None else indices
    if max(indices) >= frames.shape[0]:
        raise Rejected(reasons.DECODE_ERROR, f"the pixel data holds {frames.shape[0]} frame(s), fewer than the "
                       "header counts; truncated or corrupt")
    return (frames if indices == list(range(frames.shape[0])) else frames[indices]), ds


@contextlib.contextmanager
def _values_needed_for_the_pixels() -> Iterator[None]:
    """Header values are parsed when first used (rescale, LUTs, window): a corrupt one is
    a rejection of its file, whatever pydicom raises for it."""
    try:
        yield
    except Rejected:
        raise
    except BaseException as exc:
        if reasons.must_propagate(exc):
            raise
        raise Rejected(reasons.UNREADABLE, f"a header value needed for the pixels (rescale, lookup table, window, "
                       f"bits) cannot be interpreted ({type(exc).__name__}); the header is corrupt") from None
