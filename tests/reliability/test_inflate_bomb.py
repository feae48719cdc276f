"""A deflate bomb: a small deflated file whose data set inflates far past
ingest.max_inflated_mb is rejected as inflate_limit, without being held in memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pydicom
import pytest

from helpers import SAMPLES, deflate_bomb
from medseq.components.preprocessing import reasons
from medseq.components.preprocessing.inflate import inflate
from medseq.components.preprocessing.reasons import Rejected
from medseq.pipeline import features as F

pytestmark = pytest.mark.reliability
SERIES = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))[0]


def test_inflate_keeps_what_dcmread_inflates_and_refuses_past_the_limit():
    data = bytes(range(256)) * 4096 + bytes(3 << 20)
    packed = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = packed.compress(data) + packed.flush()
    assert inflate(stream + b"trailing", len(data)) == zlib.decompress(stream + b"trailing", -zlib.MAX_WBITS)
    with pytest.raises(Rejected) as caught:
        inflate(stream, len(data) - 1)
    assert caught.value.code == reasons.INFLATE_LIMIT and "ingest.max_inflated_mb" in caught.value.message
    with pytest.raises(zlib.error):
        inflate(stream[: len(stream) // 2], len(data))  # cut short, as zlib.decompress raises


PEAK = """
import dataclasses, json, resource, sys
from medseq.components import ingest
from medseq.pipeline.config import load_config
config = load_config()
config = dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, max_inflated_mb=float(sys.argv[4])))
ingest.run(config, ingest.IngestInputs(sys.argv[1], sys.argv[2], b"k" * 32), sys.argv[3])
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _convert(root: Path, labels: Path, out: Path, limit_mb: int) -> float:
    done = subprocess.run([sys.executable, "-c", PEAK, str(root), str(labels), str(out), str(limit_mb)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def test_a_deflate_bomb_is_rejected_without_being_held_in_memory(tmp_path):
    labels = tmp_path / "labels.csv"
    uid = pydicom.dcmread(next(SERIES.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    labels.write_text(f"series_instance_uid,label\n{uid},normal\n")
    plain, bombed = tmp_path / "plain", tmp_path / "bombed"
    shutil.copytree(SERIES, plain)
    shutil.copytree(SERIES, bombed)
    deflate_bomb(next(SERIES.iterdir()), bombed / "bomb.dcm", inflated_mb=600)
    assert (bombed / "bomb.dcm").stat().st_size < 1 << 20
    normal = _convert(plain, labels, tmp_path / "out-plain", 256)
    peak = _convert(bombed, labels, tmp_path / "out-bombed", 256)
    rows = [json.loads(line) for line in (tmp_path / "out-bombed" / F.REJECTED_FILE).read_text().splitlines()]
    assert [(r["path"], r["reason"]) for r in rows] == [("bomb.dcm", reasons.INFLATE_LIMIT)]
    assert "more than 256 MB" in rows[0]["message"]
    qc = json.loads((tmp_path / "out-bombed" / F.QC_FILE).read_text())
    assert sum(qc["records"].values()) == 1  # the series beside it still converts
    print(f"peak RSS: {peak:.0f} MB with a 600 MB deflate bomb (limit 256 MB), {normal:.0f} MB without it")
    assert peak <= normal + 64  # only the first 16 MB inflated are ever held (twice, while zlib joins them)
