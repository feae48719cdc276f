"""Hostile files in the input: special files are never opened, a large stranger is
known by its first bytes, an unlistable folder is named, and a file whose header
declares more pixels than it holds or than ingest.max_decoded_mb allows is rejected
before anything is decoded, at the memory of a normal file. Every other input still
converts, and every reported path follows one keyed-hash rule."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from helpers import KEY, SAMPLES
from medseq.components.preprocessing import reasons
from medseq.components.preprocessing.headers import read_header
from medseq.components.preprocessing.reasons import Rejected
from medseq.pipeline import features as F

pytestmark = pytest.mark.reliability
GOOD = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))[0]
# The child's own peak: VmHWM of its address space (ru_maxrss would also count the
# forked copy of this test process from before the exec).
PEAK = """
import json, re, sys
from pathlib import Path
from medseq.components import ingest
from medseq.pipeline.config import load_config
config = load_config().on_input(sys.argv[1], sys.argv[2])
ingest.run(config, ingest.IngestInputs(sys.argv[1], sys.argv[2], sys.argv[4].encode()), sys.argv[3])
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"peak_rss_mb": peak / 1024}))
"""


def _labels(root: Path, into: Path) -> Path:
    """labels.csv naming every series under `root` whose header can be read."""
    uids = set()
    for path in root.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink():  # is_file: regular files only
                continue
            with open(path, "rb") as f:
                if f.read(132)[128:] != b"DICM":
                    continue
            uids.add(str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID))
        except Exception:  # noqa: BLE001 - a broken file names no series
            continue
    into.write_text("series_instance_uid,label\n" + "".join(f"{u},normal\n" for u in sorted(uids)))
    return into


def _convert(root: Path, out: Path, timeout: float = 300) -> tuple[float, list[dict[str, object]], dict]:
    """`ingest.run` in a child process: (its peak RSS in MB, rejected.jsonl, qc.json)."""
    labels = _labels(root, out.parent / f"{out.name}-labels.csv")
    done = subprocess.run([sys.executable, "-c", PEAK, str(root), str(labels), str(out), KEY.decode()],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])
    rows = [json.loads(line) for line in (out / F.REJECTED_FILE).read_text().splitlines()]
    return peak, rows, json.loads((out / F.QC_FILE).read_text())


def _beside_a_good_series(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(GOOD, root / "good")
    return root


def _retagged(source: str, target: Path, **values: object) -> None:
    """A file of pydicom's, its header changed, written twice as a two-frame series."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(source))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    target.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        ds.SOPInstanceUID, ds.InstanceNumber = f"{ds.SOPInstanceUID.rsplit('.', 1)[0]}.{i + 1}", i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(5 * i)]
        ds.save_as(target / f"IM{i:06d}")


def _jpeg_ls_zeros(target: Path, size: int, frames: int) -> None:
    """A valid JPEG-LS file of `frames` frames of size x size zeros: a few kB."""
    import jpeg_ls

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    ds.PixelData = encapsulate([bytes(jpeg_ls.encode(np.zeros((size, size), np.uint16)))] * frames)
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    target.mkdir(parents=True, exist_ok=True)
    ds.save_as(target / "IM000000")


def test_decoder_bombs_are_rejected_before_decoding_at_the_memory_of_a_normal_file(tmp_path):
    normal, _, _ = _convert(_beside_a_good_series(tmp_path, "plain"), tmp_path / "out-plain")
    root = _beside_a_good_series(tmp_path, "bombs")
    _retagged("MR_small_RLE.dcm", root / "rle", Rows=30000, Columns=30000)  # 1.7 kB files
    _retagged("MR_small_jp2klossless.dcm", root / "j2k", Rows=30000, Columns=30000)
    _retagged("MR_small.dcm", root / "frames", NumberOfFrames=10**7)  # 10 MB a file counted
    _retagged("MR_small.dcm", root / "frames-huge", NumberOfFrames=999999999999)
    _jpeg_ls_zeros(root / "jls", 16000, 2)  # valid: 15 GB of float32 as 16 frames
    assert max(p.stat().st_size for p in root.rglob("IM*") if "good" not in p.parts) < 64 << 10
    peak, rows, qc = _convert(root, tmp_path / "out-bombs")
    by_folder = {str(r["path"]).split("/")[0]: r["reason"] for r in rows}
    assert by_folder == {"rle": reasons.DECODED_SIZE_LIMIT, "j2k": reasons.DECODED_SIZE_LIMIT,
                         "frames": reasons.TRUNCATED, "frames-huge": reasons.TRUNCATED,
                         "jls": reasons.DECODED_SIZE_LIMIT}, rows
    assert all("ingest.max_decoded_mb" in str(r["message"]) or "Number of Frames" in str(r["message"]) for r in rows)
    assert sum(qc["records"].values()) == 1  # the series beside them still converts
    print(f"peak RSS: {peak:.0f} MB with the bombs, {normal:.0f} MB without them")
    assert peak <= normal + 64


def test_decoding_keeps_only_the_frames_a_series_needs(tmp_path, monkeypatch):
    """A compressed clip sampled to fewer frames decodes only those: the others are never
    decoded, so a long clip costs what its kept frames cost."""
    from medseq.components.preprocessing import decode
    from medseq.components.preprocessing.geometry import arrange_series

    path = Path(pydicom.data.get_testdata_file("SC_rgb_rle_2frame.dcm"))
    with open(path, "rb") as f:
        header = read_header(f, str(path))
    [ordered] = arrange_series([header], "per_position")
    calls: list[object] = []
    real = decode.get_decoder

    class Counting:
        def __init__(self, syntax: str) -> None:
            self.decoder = real(syntax)

        def __getattr__(self, name: str) -> object:
            return getattr(self.decoder, name)

        def iter_array(self, data, indices, **kwargs):
            calls.append(list(indices))
            return self.decoder.iter_array(data, indices=indices, **kwargs)

        def as_array(self, data, **kwargs):
            calls.append("all")
            return self.decoder.as_array(data, **kwargs)

    monkeypatch.setattr(decode, "get_decoder", Counting)
    second = dataclasses.replace(ordered, frames=ordered.frames[1:])
    volume, _ = decode.load_series(second, {header.path: header}, lambda p: open(p, "rb"))
    whole, _ = decode.load_series(ordered, {header.path: header}, lambda p: open(p, "rb"))
    assert calls == [[1], "all"] and volume.shape[0] == 1 and whole.shape[0] == 2
    assert np.array_equal(volume[0], whole[1])


def _special_files(folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    os.mkfifo(folder / "pipe")
    made = ["pipe"]
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket"))
    server.close()
    made.append("socket")
    try:
        os.mknod(folder / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers
        made.append("zero")
    except PermissionError:
        pass  # not root: the FIFO and the socket still stand for every special file
    return made


def test_special_files_are_rejected_without_being_opened_and_strangers_by_their_first_bytes(tmp_path):
    root = _beside_a_good_series(tmp_path, "in")
    made = _special_files(root / "special")
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(100 << 20)  # 100 MB of zeros: the old code parsed them as 12 million elements
    _, rows, qc = _convert(root, tmp_path / "out", timeout=120)
    reasons_of = {str(r["path"]): r["reason"] for r in rows}
    assert reasons_of == {**{f"special/{n}": reasons.NOT_A_FILE for n in made}, "sparse.bin": reasons.NOT_DICOM}
    assert "not opened" in str([r for r in rows if r["path"] == "special/pipe"][0]["message"])
    assert sum(qc["records"].values()) == 1


class _Counting(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def test_a_large_stranger_is_read_no_further_than_its_first_bytes():
    for data, code in ((bytes(100 << 20), reasons.NOT_DICOM),  # zeros: they could start a data set
                       (b"%PDF-1.7\n" + bytes(50 << 20), reasons.NOT_DICOM),
                       (Path(pydicom.data.get_testdata_file("no_meta.dcm")).read_bytes() + bytes(50 << 20),
                        reasons.MISSING_FILE_META)):
        f = _Counting(data)
        with pytest.raises(Rejected) as raised:
            read_header(f, "stranger")
        assert raised.value.code == code
        assert f.read_bytes <= 128 << 10, f.read_bytes


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) drops root's right to read any folder")
def test_a_folder_that_cannot_be_listed_is_named_not_skipped(tmp_path):
    root = _beside_a_good_series(tmp_path, "in")
    shutil.copytree(GOOD, root / "locked" / "series")
    labels = _labels(root, tmp_path / "labels.csv")
    (root / "locked").chmod(0)
    try:
        # Root reads any folder (CAP_DAC_READ_SEARCH): the job runs without that right, as a user would.
        drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all"] \
            if os.geteuid() == 0 else []
        done = subprocess.run([*drop, sys.executable, "-c", PEAK, str(root), str(labels), str(tmp_path / "out"),
                               KEY.decode()], capture_output=True, text=True, timeout=300)
    finally:
        (root / "locked").chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / F.REJECTED_FILE).read_text().splitlines()]
    assert [(r["path"], r["reason"]) for r in rows] == [("locked", reasons.UNLISTABLE_FOLDER)]
    assert "cannot be listed" in str(rows[0]["message"])
    qc = json.loads((tmp_path / "out" / F.QC_FILE).read_text())
    assert sum(qc["records"].values()) == 1 and qc["files"]["rejected"] == 1


def test_a_codecs_panic_stays_off_the_console_and_rejects_its_series(tmp_path):
    """pylibjpeg-rle (Rust) panics on this corrupt RLE data and prints the panic, with a
    backtrace under RUST_BACKTRACE=1, straight to fd 2: the CLI keeps it off the console."""
    root = _beside_a_good_series(tmp_path, "in")
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small_RLE.dcm"))
    data = bytearray(ds.PixelData)
    for i in range(len(data) // 3, len(data) // 3 + 200):
        data[i] ^= 0x5A
    ds.PixelData, ds.SeriesInstanceUID = bytes(data), pydicom.uid.generate_uid()
    (root / "rle").mkdir()
    for i in range(2):
        ds.SOPInstanceUID, ds.InstanceNumber = pydicom.uid.generate_uid(), i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.save_as(root / "rle" / f"IM{i:06d}")
    labels = _labels(root, tmp_path / "labels.csv")
    env = {**os.environ, "MEDSEQ_HASH_KEY": KEY.decode(), "RUST_BACKTRACE": "1"}
    done = subprocess.run([sys.executable, "-m", "medseq.pipeline.cli", "convert", "--input", str(root), "--labels",
                           str(labels), "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and "panicked" not in done.stderr and "backtrace" not in done.stderr, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / F.REJECTED_FILE).read_text().splitlines()]
    assert [(r["path"], r["reason"]) for r in rows] == [("rle", reasons.DECODE_ERROR)]
