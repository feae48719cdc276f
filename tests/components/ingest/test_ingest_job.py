"""The ingest job end to end on real DICOM: records, rejections, determinism, privacy."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf

from helpers import IN_PROCESS, KEY, SAMPLES, convert
from medseq.components import synth
from medseq.components.io import deid
from medseq.pipeline import features as F
from medseq.pipeline.config import PixelPhiConfig

IDENTIFIER_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "AccessionNumber",
                   "InstitutionName", "ReferringPhysicianName", "StudyInstanceUID", "SeriesInstanceUID",
                   "SOPInstanceUID", "FrameOfReferenceUID")


def read_records(out: Path, split: str) -> list[tf.train.Example]:
    files = sorted(str(p) for p in (out / split).glob("*.tfrecord.gz"))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def all_records(out: Path) -> list[tf.train.Example]:
    return [r for split in F.SPLITS for r in read_records(out, split)]


def identifiers(root: Path) -> set[str]:
    found = set()
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - junk files
            continue
        for tag in IDENTIFIER_TAGS:
            value = str(ds.get(tag, "") or "")
            if len(value) >= 6:
                found.add(value)
                found.update(p for p in value.split("^") if len(p) >= 6)
    return found


def output_text(out: Path) -> bytes:
    blobs = []
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blobs.append(gzip.decompress(data) if path.suffix == ".gz" else data)
    return b"\n".join(blobs)


def test_records_follow_the_contract_and_labels(cine_records):
    qc = json.loads((cine_records / F.QC_FILE).read_text())
    assert qc["classes"] == ["normal", "reduced_ef"]
    labels = dict(list(csv.reader(open(SAMPLES / "cine_ef" / "labels.csv")))[1:])
    expected = {}
    for path in (SAMPLES / "cine_ef" / "dicom").rglob("*"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - junk files
            continue
        uid = str(ds.SeriesInstanceUID)
        source = f"{uid}/{ds.SOPInstanceUID}" if "NumberOfFrames" in ds else uid  # multi-frame: own series
        if uid in labels:
            expected[deid.keyed_hash(KEY, "series", source)] = labels[uid]
    records = all_records(cine_records)
    assert len(records) == sum(qc["records"].values()) == len(labels)
    for ex in records:
        f = ex.features.feature
        shape = list(f[F.FRAMES_SHAPE].int64_list.value)
        assert shape == [16, 64, 64, 1] and f[F.FRAMES_DTYPE].bytes_list.value[0] == b"uint8"
        frames = np.frombuffer(f[F.FRAMES].bytes_list.value[0], np.uint8).reshape(shape)
        assert frames.std() > 0 and f[F.VALID_FRAMES].int64_list.value[0] == 16
        key = f[F.SERIES_KEY].bytes_list.value[0].decode()
        assert qc["classes"][f[F.LABEL].int64_list.value[0]] == expected[key]
        assert f[F.MODALITY].bytes_list.value[0] == b"MR" and len(f[F.SPACING].float_list.value) == 3
        assert len(f[F.PATIENT_KEY].bytes_list.value[0]) == 64


def test_every_input_file_is_accounted_for(cine_records):
    qc = json.loads((cine_records / F.QC_FILE).read_text())
    n_files = sum(1 for p in (SAMPLES / "cine_ef" / "dicom").rglob("*") if p.is_file())
    assert qc["files"]["in_records"] + qc["files"]["rejected"] == n_files
    reasons = {json.loads(line)["reason"] for line in open(cine_records / F.REJECTED_FILE)}
    assert reasons == {"not_dicom", "unlabeled"}  # the junk files and the localizers


def test_no_identifier_reaches_any_output(cine_records):
    text = output_text(cine_records)
    leaked = [v for v in identifiers(SAMPLES / "cine_ef" / "dicom") if v.encode() in text]
    assert not leaked


def test_patients_never_span_two_splits(cine_records):
    seen: dict[bytes, str] = {}
    for split in F.SPLITS:
        for ex in read_records(cine_records, split):
            patient = ex.features.feature[F.PATIENT_KEY].bytes_list.value[0]
            assert seen.setdefault(patient, split) == split


def test_same_input_and_key_give_identical_bytes_and_a_rerun_replaces(tmp_path, config):
    small = dataclasses.replace(config, input=str(SAMPLES / "ct_nodule" / "dicom"),
                                labels=str(SAMPLES / "ct_nodule" / "labels.csv"))
    first, second = tmp_path / "a", tmp_path / "b"
    convert(small, first, key=KEY, beam_args=IN_PROCESS)
    convert(small, second, key=b"an-earlier-key-0123456789", beam_args=IN_PROCESS)  # an earlier output there
    (second / "train" / "stale-00000-of-00001.tfrecord.gz").write_bytes(b"old")
    convert(small, second, key=KEY, beam_args=IN_PROCESS)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    assert not list(second.glob(".medseq-*")), "no staging or trash left behind"
    axes = {ex.features.feature[F.FRAME_AXIS].bytes_list.value[0] for ex in all_records(first)}
    assert axes == {F.AXIS_SPACE.encode()}  # slice stacks: averaged along the slices, never rolled


def test_cine_records_step_through_time(cine_records):
    axes = {ex.features.feature[F.FRAME_AXIS].bytes_list.value[0] for ex in all_records(cine_records)}
    assert axes == {F.AXIS_TIME.encode()}


def test_records_lie_in_an_order_the_secret_key_does_not_change(tmp_path, config):
    small = dataclasses.replace(config, input=str(SAMPLES / "ct_nodule" / "dicom"),
                                labels=str(SAMPLES / "ct_nodule" / "labels.csv"),
                                ingest=dataclasses.replace(config.ingest, num_shards=2))
    frames = []
    for name, key in (("a", KEY), ("b", b"some-other-key-0123456789")):
        convert(small, tmp_path / name, key=key, beam_args=IN_PROCESS)
        frames.append([[ex.features.feature[F.FRAMES].bytes_list.value[0] for ex in read_records(tmp_path / name, s)]
                       for s in F.SPLITS])
    assert frames[0] == frames[1]


def test_split_is_stable_when_patients_are_added(tmp_path, config):
    def splits(n: int) -> dict[str, str]:
        root = tmp_path / f"p{n}"
        synth.run("ct_nodule", n, 5, root, small=True)
        cfg = dataclasses.replace(config, input=str(root / "dicom"), labels=str(root / "labels.csv"))
        convert(cfg, root / "out", key=KEY, beam_args=IN_PROCESS)
        return {ex.features.feature[F.SERIES_KEY].bytes_list.value[0].decode(): split
                for split in F.SPLITS for ex in read_records(root / "out", split)}

    few, more = splits(4), splits(7)
    assert few and all(more[k] == v for k, v in few.items())


def test_pydicom_test_files_order_reject_and_explain(tmp_path, pydicom_files, config):
    """Real series from pydicom: CT5N in geometric order; broken files with reasons."""
    root = tmp_path / "in"
    shutil.copytree(pydicom_files / "dicomdirtests" / "98892001", root / "98892001")
    shutil.copytree(pydicom_files / "dicomdirtests" / "98892003", root / "98892003")
    shutil.copytree(pydicom_files / "dicomdirtests" / "77654033" / "CT2", root / "CT2")
    for name in ("MR_truncated.dcm", "no_meta.dcm", "README.txt", "rtplan.dcm", "JPEG-lossy.dcm"):
        shutil.copy(pydicom_files / name, root / name)
    uid_named = root / "1.2.840.113619.2.1.1.322987881.621.736170080.681.dcm"
    shutil.copy(pydicom_files / "no_meta.dcm", uid_named)
    labels = {}
    for path in root.rglob("*"):
        try:
            labels[str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)] = "x"
        except Exception:  # noqa: BLE001
            pass
    with open(tmp_path / "labels.csv", "w") as f:
        f.write("series_instance_uid,label\n" + "".join(f"{k},x\n" for k in labels))
    cfg = dataclasses.replace(config, input=str(root), labels=str(tmp_path / "labels.csv"),
                              preprocess=dataclasses.replace(config.preprocess, temporal="pad", min_frames=1))
    out = tmp_path / "out"
    convert(cfg, out, key=KEY, beam_args=IN_PROCESS)
    rejected = {json.loads(line)["path"]: json.loads(line)["reason"] for line in open(out / F.REJECTED_FILE)}
    assert rejected["JPEG-lossy.dcm"] == "secondary_capture"  # Conversion Type WSD: screened before decoding
    # Kept, it reaches the decoder, which names what it cannot read.
    cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, pixel_phi=PixelPhiConfig(
        secondary_capture="keep")))
    convert(cfg, out, key=KEY, beam_args=IN_PROCESS)
    rejected = {json.loads(line)["path"]: json.loads(line)["reason"] for line in open(out / F.REJECTED_FILE)}
    assert rejected["MR_truncated.dcm"] == "decode_error"
    assert rejected["no_meta.dcm"] == "missing_file_meta"
    assert rejected["README.txt"] == "not_dicom"
    assert rejected["rtplan.dcm"] == "no_pixel_data"
    assert rejected["JPEG-lossy.dcm"] == "unsupported_transfer_syntax"
    assert rejected["CT2"] == "missing_slices"
    # The parent folder is a patient ID: hashed; the series folder name is kept.
    assert [r for p, r in rejected.items() if p.endswith("/MR700")] == ["inconsistent_orientation"]
    assert not any(p.startswith("98892003") for p in rejected)
    assert not any("1.2.840.113619" in p for p in rejected), "UID-like file names are hashed"
    ct5n = [pydicom.dcmread(p) for p in sorted((root / "98892001" / "CT5N").iterdir())]
    key = deid.keyed_hash(KEY, "series", str(ct5n[0].SeriesInstanceUID))
    record = next(ex for ex in all_records(out)
                  if ex.features.feature[F.SERIES_KEY].bytes_list.value[0].decode() == key)
    f = record.features.feature
    frames = np.frombuffer(f[F.FRAMES].bytes_list.value[0], np.uint8).reshape(list(f[F.FRAMES_SHAPE].int64_list.value))
    assert f[F.VALID_FRAMES].int64_list.value[0] == 5 and not frames[5:].any()
    by_z = sorted(ct5n, key=lambda d: float(d.ImagePositionPatient[2]))
    means = [float(d.pixel_array.mean()) for d in by_z]
    # Frame order in the record follows z: compare each frame's brightness rank with the slices'.
    assert np.argsort([frames[i].mean() for i in range(5)]).tolist() == np.argsort(means).tolist()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_same_job_runs_on_the_portable_job_service(tmp_path, config):
    """Beam's local job service with a LOOPBACK environment gives the same records."""
    port = _free_port()
    service = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("localhost", port)) == 0:
                    break
            time.sleep(0.5)
        small = dataclasses.replace(config, input=str(SAMPLES / "ct_nodule" / "dicom"),
                                    labels=str(SAMPLES / "ct_nodule" / "labels.csv"))
        portable, direct = tmp_path / "portable", tmp_path / "direct"
        convert(small, portable, key=KEY, beam_args=[
            "--runner=PortableRunner", f"--job_endpoint=localhost:{port}", "--environment_type=LOOPBACK"])
        convert(small, direct, key=KEY, beam_args=IN_PROCESS)
    finally:
        service.terminate()
        service.wait(timeout=30)
    shards = sorted(p.relative_to(direct) for p in direct.rglob("*.tfrecord.gz"))
    assert shards and shards == sorted(p.relative_to(portable) for p in portable.rglob("*.tfrecord.gz"))
    for rel in shards:
        assert (direct / rel).read_bytes() == (portable / rel).read_bytes()


def test_folders_named_after_patients_do_not_leak(tmp_path, pydicom_files, config):
    """pydicom's dicomdirtests folders are patient IDs (77654033): rejected.jsonl must not show them."""
    root = tmp_path / "in"
    shutil.copytree(pydicom_files / "dicomdirtests", root / "dicomdirtests")
    (root / "Doe^Peter").mkdir()  # a file of patient Doe^Peter, in a folder named after him
    shutil.copy(pydicom_files / "dicomdirtests" / "98892003" / "MR700" / "4467", root / "Doe^Peter" / "im.dcm")
    (tmp_path / "labels.csv").write_text("series_instance_uid,label\n1.2.3,x\n")
    cfg = dataclasses.replace(config, input=str(root), labels=str(tmp_path / "labels.csv"))
    convert(cfg, tmp_path / "out", key=KEY, beam_args=IN_PROCESS)
    text = output_text(tmp_path / "out")
    leaked = [v for v in identifiers(root) | {"77654033", "98892001", "98892003", "Doe"} if v.encode() in text]
    assert not leaked
