"""Pixel pass: decode the ordered frames of a series and apply the modality LUT.

The result is a float32 volume in modality units (Hounsfield units for CT) plus the
header values the numeric preprocessing needs (`SeriesMeta`), nothing else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless

from medseq.components.preprocessing import reasons
from medseq.components.preprocessing.geometry import OrderedSeries
from medseq.components.preprocessing.headers import FileHeader, _item, read_dataset
from medseq.components.preprocessing.reasons import Rejected
from medseq.pipeline import features as F

# Measured here (256x256 int16): pyjpegls decodes JPEG-LS in 2.8 ms where the default
# order (GDCM first) takes 4.0 ms; for the other syntaxes the default order is as fast.
_PREFERRED_PLUGIN: dict[str, str] = {str(JPEGLSLossless): "pyjpegls", str(JPEGLSNearLossless): "pyjpegls"}


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


def _rescale(ds: Dataset, frame: int) -> tuple[float, float] | None:
    """(slope, intercept) from an enhanced object's functional groups, if it has them."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    for group in ((per_frame[frame] if per_frame and frame < len(per_frame) else None),
                  _item(ds, "SharedFunctionalGroupsSequence")):
        item = _item(group, "PixelValueTransformationSequence") if group is not None else None
        if item is not None and "RescaleSlope" in item:
            return float(item.RescaleSlope), float(item.get("RescaleIntercept", 0.0))
    return None


def _header_window(ds: Dataset) -> tuple[float, float] | None:
    source = ds if "WindowCenter" in ds else _item(ds, "SharedFunctionalGroupsSequence", "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    center, width = source.WindowCenter, source.WindowWidth
    # Several windows may be listed; the first is the one the modality suggests.
    center = center[0] if isinstance(center, (list, MultiValue)) else center
    width = width[0] if isinstance(width, (list, MultiValue)) else width
    try:
        return float(center), float(width)
    except (TypeError, ValueError):
        return None


def _frames_of(ds: Dataset, header: FileHeader) -> np.ndarray:
    """All frames of one file, (F, H, W[, 3]) float32 in modality units."""
    plugin = _PREFERRED_PLUGIN.get(str(ds.file_meta.TransferSyntaxUID), "")
    try:
        if plugin and plugin in get_decoder(ds.file_meta.TransferSyntaxUID).available_plugins:
            ds.pixel_array_options(decoding_plugin=plugin)
        pixels = ds.pixel_array
    except BaseException as exc:  # noqa: BLE001 - codecs raise anything on corrupt data, Rust panics included
        if reasons.must_propagate(exc):
            raise
        syntax = ds.file_meta.TransferSyntaxUID.name
        text = str(exc).lower()
        if isinstance(exc, NotImplementedError) or "does not support" in text or "no pixel data decoders" in text:
            bits = ds.get("BitsStored", "?")
            raise Rejected(reasons.UNSUPPORTED_TRANSFER_SYNTAX, f"no installed, permissively licensed decoder "
                           f"handles {syntax} with {bits}-bit samples") from None
        raise Rejected(reasons.DECODE_ERROR, f"the pixel data ({syntax}) cannot be decoded "
                       f"({type(exc).__name__}); truncated or corrupt") from None
    if header.photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)  # indices -> RGB through the palette
    rgb = is_colour(header)
    if pixels.ndim == (3 if rgb else 2):
        pixels = pixels[None]
    if rgb:
        return pixels.astype(np.float32)
    if header.multiframe and _rescale(ds, 0) is not None:
        out = np.empty(pixels.shape, np.float32)
        for i in range(pixels.shape[0]):
            slope, intercept = _rescale(ds, i) or (1.0, 0.0)
            out[i] = pixels[i] * slope + intercept
        return out
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)


def is_colour(header: FileHeader) -> bool:
    return header.samples_per_pixel == 3 or header.photometric == "PALETTE COLOR"


def _max_value(ds: Dataset, header: FileHeader) -> float:
    """Full scale of the stored (or, for palettes, looked-up) values."""
    if header.photometric == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        bits = int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 16
        return float(2 ** (16 if bits > 8 else 8) - 1)
    return float(2 ** int(ds.get("BitsStored", 8)) - 1)


def load_series(ordered: OrderedSeries, headers: dict[str, FileHeader], open_file: Callable[[str], IO[bytes]],
                decode_timeout_s: float | None = None) -> tuple[np.ndarray, SeriesMeta]:
    """Decodes every file of the series once and stacks the frames in `ordered` order.
    A file that takes longer than `decode_timeout_s` is rejected (decode_timeout)."""
    by_path: dict[str, np.ndarray] = {}
    first_ds: Dataset | None = None
    for path in dict.fromkeys(f.path for f in ordered.frames):
        with open_file(path) as fileobj:
            ds = read_dataset(fileobj, path, stop_before_pixels=False)
        started = time.monotonic()
        with _values_needed_for_the_pixels():
            by_path[path] = _frames_of(ds, headers[path])
        took = time.monotonic() - started
        if decode_timeout_s is not None and took > decode_timeout_s:
            raise Rejected(reasons.DECODE_TIMEOUT, f"decoding one file took {took:.3g} s, expected at most "
                           f"{decode_timeout_s:g} s (ingest.decode_timeout_s)")
        if first_ds is None:
            first_ds = ds
    volume = np.stack([by_path[f.path][f.frame] for f in ordered.frames])
    header = headers[ordered.frames[0].path]
    if first_ds is None:
        raise Rejected(reasons.NO_PIXEL_DATA, "the series holds no frames")
    with _values_needed_for_the_pixels():
        return volume, _series_meta(first_ds, header, ordered)


@contextlib.contextmanager
def _values_needed_for_the_pixels() -> Iterator[None]:
    """Header values are parsed when first used (rescale, LUTs, window): a corrupt one is
    a rejection of its file, whatever pydicom raises for it."""
    try:
        yield
    except Rejected:
        raise
    except BaseException as exc:  # noqa: BLE001 - e.g. NotImplementedError for a VR garbled into 'LS'
        if reasons.must_propagate(exc):
            raise
        raise Rejected(reasons.UNREADABLE, f"a header value needed for the pixels (rescale, lookup table, window, "
                       f"bits) cannot be interpreted ({type(exc).__name__}); the header is corrupt") from None


def _series_meta(first_ds: Dataset, header: FileHeader, ordered: OrderedSeries) -> SeriesMeta:
    return SeriesMeta(
        modality=header.modality,
        photometric=header.photometric,
        rgb=is_colour(header),
        window=_header_window(first_ds),
        pixel_spacing=header.pixel_spacing,
        interval=ordered.interval,
        max_value=_max_value(first_ds, header),
        axis=ordered.axis,
    )
