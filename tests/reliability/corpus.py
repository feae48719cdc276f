"""A fuzz corpus of broken DICOM, mixed with good series (seeded: the same corpus every time).

Sources: the committed CT samples and pydicom's own test files in many transfer
syntaxes. Each mutant gets UIDs of its own and a label, so that a mutant whose header
survives reaches the decoder as a one-file series; a few mutants replace a file inside
a labeled sample series instead. Mutations: truncation (in the header or in the
pixels), bit flips in the header, a huge declared length, garbage after the preamble,
pixel data cut short, corrupted compressed pixel bytes, a wrong transfer syntax UID.
"""

from __future__ import annotations

import csv
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from helpers import SAMPLES

PYDICOM_SOURCES = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_16bit_2frame.dcm", "rtdose_rle.dcm", "JPEGLSNearLossless_08.dcm",
    "image_dfl.dcm", "rtdose.dcm", "liver_1frame.dcm", "JPEGLSNearLossless_16.dcm", "693_J2KI.dcm",
)
# Transfer syntax UIDs of one length (19 characters), swapped in place.
SAME_LENGTH_SYNTAXES = (b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.5")
LABELS = ("clear", "nodule")  # the sample set's classes: label indices stay those of a clean run


@dataclass(frozen=True)
class Corpus:
    root: Path  # the input folder
    labels: Path
    mutants: tuple[Path, ...]  # every mutated file
    victim_series: frozenset[str]  # SeriesInstanceUIDs of sample series holding a mutant
    clean_root: Path  # the same sample series, unmutated
    clean_labels: Path  # their labels (the classes of both runs are the same)


def _pixel_offset(data: bytes) -> int:
    """Where the Pixel Data element's tag starts (7FE0,0010), or 3/4 into the file."""
    for tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        found = data.rfind(tag)
        if found > 0:
            return found
    return len(data) * 3 // 4


def truncate_header(data: bytes, rng: np.random.Generator) -> bytes:
    return data[:int(rng.integers(133, max(134, _pixel_offset(data))))]


def truncate_pixels(data: bytes, rng: np.random.Generator) -> bytes:
    start = _pixel_offset(data) + 12
    return data[:int(rng.integers(start, max(start + 1, len(data) - 1)))]


def flip_header_bits(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    end = min(_pixel_offset(data), len(out))
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(132, max(133, end)))
        out[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def huge_length(data: bytes, rng: np.random.Generator) -> bytes:
    """A declared length of ~4 GB on an element after the file meta (explicit or implicit VR)."""
    out = bytearray(data)
    meta_end = 132 + 12 + struct.unpack("<I", data[140:144])[0] if data[132:136] == b"\x02\x00\x00\x00" else 144
    candidates = [i for i in range(meta_end, min(len(out) - 8, _pixel_offset(data)), 2)
                  if out[i + 1] in (0x00,) and out[i] in (0x08, 0x10, 0x18, 0x20, 0x28)]
    if not candidates:
        return data[:meta_end] + b"\x10\x00\x10\x00PN\xff\xff" + data[meta_end:]
    i = candidates[int(rng.integers(0, len(candidates)))]
    if bytes(out[i + 4:i + 6]).isalpha():  # explicit VR: a 2-byte length, or a 4-byte one after OB/OW/...
        if bytes(out[i + 4:i + 6]) in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            out[i + 8:i + 12] = b"\xf0\xff\xff\xff"
        else:
            out[i + 6:i + 8] = b"\xfe\xff"
    else:
        out[i + 4:i + 8] = b"\xf0\xff\xff\xff"
    return bytes(out)


def garbage_after_preamble(data: bytes, rng: np.random.Generator) -> bytes:
    return data[:132] + rng.integers(0, 256, max(64, len(data) - 132), dtype=np.uint8).tobytes()


def corrupt_pixels(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    start = _pixel_offset(data) + 16
    for _ in range(int(rng.integers(8, 64))):
        if start < len(out):
            out[int(rng.integers(start, len(out)))] = int(rng.integers(0, 256))
    return bytes(out)


def wrong_syntax(data: bytes, rng: np.random.Generator) -> bytes:
    for uid in SAME_LENGTH_SYNTAXES:
        at = data.find(uid, 132, 1024)
        if at > 0:
            others = [u for u in SAME_LENGTH_SYNTAXES if u != uid]
            return data[:at] + others[int(rng.integers(0, len(others)))] + data[at + len(uid):]
    return corrupt_pixels(data, rng)


MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "truncate_header": truncate_header, "truncate_pixels": truncate_pixels, "flip_header_bits": flip_header_bits,
    "huge_length": huge_length, "garbage_after_preamble": garbage_after_preamble,
    "corrupt_pixels": corrupt_pixels, "wrong_syntax": wrong_syntax,
}


def _fresh_uids(source: Path, target: Path) -> str:
    """`source` saved as `target` with new series and instance UIDs (pixels untouched); the series UID.
    The UIDs derive from the target's name: the same corpus every time."""
    ds = pydicom.dcmread(source)
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["medseq fuzz series", target.name])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["medseq fuzz instance", target.name])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return str(ds.SeriesInstanceUID)


def build(root: Path, per_source: int = 4, victims: int = 4, seed: int = 0) -> Corpus:
    """About 7 x `per_source` mutants of each source file, beside the CT samples."""
    rng = np.random.default_rng(seed)
    samples = SAMPLES / "ct_nodule"
    clean_root = root / "clean"
    labels: dict[str, str] = {}
    for task in ("ct_nodule", "cine_ef"):
        shutil.copytree(SAMPLES / task / "dicom", clean_root / "samples" / task)
        labels.update(csv.reader((SAMPLES / task / "labels.csv").read_text().splitlines()[1:]))
    shutil.copytree(clean_root, root / "input")
    clean_labels = _write_labels(root / "clean_labels.csv", labels)
    mutants: list[Path] = []
    sources = [Path(pydicom.data.get_testdata_file(name)) for name in PYDICOM_SOURCES]
    sources += sorted((samples / "dicom").glob("flat/*.dcm"))[:6]
    pristine = root / "pristine"
    pristine.mkdir()
    for s, source in enumerate(sources):
        for name, mutate in MUTATIONS.items():
            for k in range(per_source):
                base = pristine / f"{s:02d}-{name}-{k}.dcm"
                labels[_fresh_uids(source, base)] = LABELS[(s + k) % 2]
                path = root / "input" / "mutants" / f"{s:02d}" / f"{name}-{k}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(mutate(base.read_bytes(), rng))
                mutants.append(path)
    shutil.rmtree(pristine)
    victim_series: set[str] = set()
    series_files: dict[str, list[Path]] = {}
    for path in sorted((root / "input" / "samples" / "ct_nodule").rglob("IM*")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.SeriesInstanceUID) in labels and "NumberOfFrames" not in ds:
            series_files.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    for i, (uid, files) in enumerate(sorted(series_files.items())[:victims]):
        path = files[len(files) // 2]
        path.write_bytes((truncate_pixels, corrupt_pixels)[i % 2](path.read_bytes(), rng))
        mutants.append(path)
        victim_series.add(uid)
    return Corpus(root / "input", _write_labels(root / "labels.csv", labels), tuple(mutants),
                  frozenset(victim_series), clean_root, clean_labels)


def _write_labels(path: Path, labels: dict[str, str]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("series_instance_uid", "label"))
        writer.writerows(sorted(labels.items()))
    return path
