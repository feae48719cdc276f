"""Text burned into the pixels: what DICOM says about it, and what reaches a record.

Headers are de-identified by keyed hashes; pixels are not text, and a name, an ID or a
date drawn into them would travel into the records, the run report's frame strips and
every model trained on them. DICOM marks where that risk is, and `ingest.pixel_phi`
acts on it, in ingest and `medseq predict` alike (prepare.py calls both functions):

- Burned In Annotation (0028,0301) YES: the file says so itself -> `burned_in_annotation`.
- Secondary captures (the SC SOP classes) and images converted from another source
  (any Conversion Type: WSD workstation, SYN synthetic, DRW drawing, DV video, ...):
  screenshots and scans, text likely anywhere -> `secondary_capture`.
- Ultrasound with a Sequence of Ultrasound Regions: the patient banner, the date and the
  measurements are drawn around the imaging areas the scanner lists. Only their union
  reaches a record: `crop` to its bounding box (outside the union zeroed inside it) or
  `mask` (zeroed outside it, the image keeps its size). A region running past the image
  (a file downsampled without updating them, like pydicom's examples_ybr_color.dcm) is
  clipped to it; none left -> `no_imaging_region`.

What this cannot see: text drawn inside an imaging region, or in a file that declares
nothing (Burned In Annotation absent or NO on an image that has some). That needs OCR
or review of the pixels; the README's threat model says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ...pipeline.config import PixelPhiConfig
from . import reasons
from .headers import FileHeader, FrameRef
from .reasons import Rejected

# The Secondary Capture Image Storage SOP classes (PS3.4 B.5): single-frame, and the
# multi-frame single bit, grayscale byte, grayscale word and true colour ones.
SECONDARY_CAPTURE_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1",
                                       "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
                                       "1.2.840.10008.5.1.4.1.1.7.4"})

# The decisions that let a series through, as counted in qc.json's `pixel_phi.records`.
BURNED_IN_KEPT = "burned_in_kept"
SECONDARY_CAPTURE_KEPT = "secondary_capture_kept"
CROPPED = "cropped_to_regions"
MASKED = "masked_to_regions"
REGIONS_KEPT = "regions_not_applied"  # ultrasound_regions: off, on a file that lists some
# Ultrasound listing no region: kept whole (nothing says where its imaging area is), and
# counted, since it is where a banner is most likely to have come through.
NO_REGIONS_LISTED = "ultrasound_without_regions"
DECISIONS = (BURNED_IN_KEPT, SECONDARY_CAPTURE_KEPT, CROPPED, MASKED, REGIONS_KEPT, NO_REGIONS_LISTED)
REJECTIONS = (reasons.BURNED_IN_ANNOTATION, reasons.SECONDARY_CAPTURE, reasons.NO_IMAGING_REGION)


def is_secondary_capture(header: FileHeader) -> bool:
    return header.sop_class in SECONDARY_CAPTURE_CLASSES or bool(header.conversion_type)


# (reason, the policy's key, the decision when kept, what marks a file, what it means)
_DECLARED: tuple[tuple[str, str, str, Callable[[FileHeader], bool], str], ...] = (
    (reasons.BURNED_IN_ANNOTATION, "burned_in_annotation", BURNED_IN_KEPT, lambda h: h.burned_in == "YES",
     "declare Burned In Annotation YES: identifying text in the pixels"),
    (reasons.SECONDARY_CAPTURE, "secondary_capture", SECONDARY_CAPTURE_KEPT, is_secondary_capture,
     "are secondary captures or converted images (an SC SOP class or a Conversion Type), which often carry "
     "text anywhere in the image"),
)


def screen(headers: Sequence[FileHeader], policy: PixelPhiConfig) -> tuple[str, ...]:
    """Raises Rejected where the policy keeps a series out; else the decisions taken that
    let it in (BURNED_IN_KEPT, SECONDARY_CAPTURE_KEPT)."""
    decisions = []
    for code, key, kept, marked, meaning in _DECLARED:
        count = sum(marked(h) for h in headers)
        if not count:
            continue
        if getattr(policy, key) == "reject":
            raise Rejected(code, f"{count} file(s) {meaning} (ingest.pixel_phi.{key}: keep to use them anyway)")
        decisions.append(kept)
    return tuple(decisions)


def region_mask(boxes: tuple[tuple[int, int, int, int], ...], rows: int, columns: int) -> np.ndarray:
    """(rows, columns) bool: inside any of the boxes (inclusive corners), clipped to the image."""
    mask = np.zeros((rows, columns), bool)
    for x0, y0, x1, y1 in boxes:
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, columns - 1), min(y1, rows - 1)
        if x0 <= x1 and y0 <= y1:
            mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def imaging_area(volume: np.ndarray, frames: Sequence[FrameRef], headers: dict[str, FileHeader],
                 policy: PixelPhiConfig) -> tuple[np.ndarray, tuple[str, ...]]:
    """The decoded frames (N, H, W[, 3], one per `frames`) with only the pixels of each
    file's ultrasound regions left, per `policy.ultrasound_regions`, and the decision
    taken (none for a series without regions)."""
    listed = {f.path: headers[f.path].regions for f in frames}
    if all(boxes is None for boxes in listed.values()):
        return volume, (NO_REGIONS_LISTED,) if headers[frames[0].path].modality == "US" else ()
    if policy.ultrasound_regions == "off":
        return volume, (REGIONS_KEPT,)
    if any(boxes is None for boxes in listed.values()):
        raise Rejected(reasons.NO_IMAGING_REGION, "some files of the series list ultrasound regions and others "
                       "none: expected the regions of every file, to keep what lies outside them out")
    rows, columns = volume.shape[1:3]
    masks = {path: region_mask(boxes, rows, columns) for path, boxes in listed.items() if boxes is not None}
    if not all(mask.any() for mask in masks.values()):
        raise Rejected(reasons.NO_IMAGING_REGION, f"the ultrasound regions leave no pixel of the {rows} x {columns} "
                       "image (Sequence of Ultrasound Regions empty, or all of it outside the image)")
    per_frame = np.stack([masks[f.path] for f in frames])
    keep = per_frame[..., None] if volume.ndim == 4 else per_frame
    out = np.where(keep, volume, np.zeros((), volume.dtype))
    if policy.ultrasound_regions == "mask":
        return out, (MASKED,)
    union: np.ndarray = np.any(per_frame, axis=0)
    inside_rows, inside_columns = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    top, bottom = int(inside_rows[0]), int(inside_rows[-1]) + 1
    left, right = int(inside_columns[0]), int(inside_columns[-1]) + 1
    return np.ascontiguousarray(out[:, top:bottom, left:right]), (CROPPED,)
