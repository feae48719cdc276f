"""Patient data: identifiers planted in every identifying attribute synth writes (DICOM
PS3.15 Basic Profile: names, IDs, dates, accession numbers, institutions, referring
physicians, UIDs, free text), and in a folder and a file name, go through `medseq run`.
Not one of them appears in any output: records (decompressed), rejected.jsonl, qc.json,
run.json, reports, TensorBoard logs, the SavedModel and its assets, the warm-up requests,
the model card, or anything the run printed."""

from __future__ import annotations

import csv
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml

from helpers import auc_gate
from medseq.components import synth

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def planted_values(n: int) -> dict[str, str]:
    """Values unlikely to occur by chance, one set per patient."""
    return {
        "PatientName": f"Plantname^Pat{n:03d}Zq", "PatientID": f"PID{n:05d}XQ", "OtherPatientIDs": f"OPID{n:04d}Wk",
        "PatientBirthDate": f"193{n % 10}0{n % 9 + 1}1{n % 9}", "StudyDate": f"1941{n % 12 + 1:02d}2{n % 9}",
        "SeriesDate": f"1942{n % 12 + 1:02d}1{n % 9}", "ContentDate": f"1943{n % 12 + 1:02d}1{n % 9}",
        "AccessionNumber": f"ACC{n:05d}Q7", "InstitutionName": f"Planted General Hospital {n:03d}",
        "ReferringPhysicianName": f"Refdoc^Plant{n:03d}", "StudyID": f"SID{n:03d}V",
        "StudyDescription": f"PLANTED STUDY TEXT {n:03d}", "SeriesDescription": f"PLANTED SERIES TEXT {n:03d}",
    }


def plant(root: Path) -> tuple[set[str], dict[str, str]]:
    """Rewrites every DICOM file under root with planted values; returns them with the UIDs."""
    secrets: set[str] = set()
    patients: dict[str, int] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - synth's non-DICOM junk files stay as they are
            continue
        n = patients.setdefault(str(ds.get("PatientID", "")), len(patients))
        for keyword, value in planted_values(n).items():
            setattr(ds, keyword, value)
            secrets.add(value)
        secrets.update(str(ds.get(k)) for k in UID_KEYWORDS if ds.get(k))
        ds.save_as(path, enforce_file_format=True)
    return secrets, {str(v): f"PID{v:05d}XQ" for v in patients.values()}


def searchable(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip: the TFRecord shards
        data += gzip.decompress(data)
    return data


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    synth.run("cine_ef", patients=24, seed=9, out=root / "data", small=True)
    secrets, ids = plant(root / "data" / "dicom")
    # Identifiers in a folder and a file name too: a patient's folder named by its planted ID,
    # a file named by an accession number.
    first = sorted((root / "data" / "dicom").glob("PA*"))[0]
    patient = str(pydicom.dcmread(next(p for p in first.rglob("IM*"))).PatientID)
    first.rename(first.with_name(patient))
    image = next((root / "data" / "dicom" / patient).rglob("IM*"))
    accession = str(pydicom.dcmread(image).AccessionNumber)
    image.rename(image.with_name(f"{accession}.dcm"))
    assert len(secrets) > 100 and ids
    gate = auc_gate(root / "gate.pbtxt", slices=("site",))
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "input": str(root / "data" / "dicom"), "labels": str(root / "data" / "labels.csv"),
        "preprocess": {"frames": 8, "height": 32, "width": 32}, "validate": {"max_label_linf": 1.0},
        "train": {"epochs": 1, "conv_filters": [4], "lstm_units": 4}, "evaluate": {"eval_config": gate},
        "report": {"frame_strips": "off"}}))
    run = root / "run"
    result = subprocess.run([sys.executable, "-m", "medseq.pipeline.cli", "run", "--config", str(config),
                             "--out", str(run)], capture_output=True, timeout=900, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    with (root / "data" / "labels.csv").open() as f:
        assert len(list(csv.reader(f))) > 10
    return run, secrets, result.stdout + result.stderr


def test_no_planted_identifier_reaches_any_output_or_console_line(planted_run):
    run, secrets, printed = planted_run
    outputs = [p for p in run.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in outputs}
    assert {".gz", ".json", ".jsonl", ".html", ".pb", ".pbtxt"} <= kinds and any("warmup" in p.name for p in outputs)
    hits = [(secret, "console") for secret in secrets if secret.encode() in printed]
    for path in outputs:
        data = searchable(path)
        hits += [(secret, str(path.relative_to(run))) for secret in secrets if secret.encode() in data]
    assert not hits, hits[:5]


def test_folder_and_file_names_holding_identifiers_are_hashed_in_reports(planted_run):
    run, secrets, _ = planted_run
    rejected = (run / "ingest" / "rejected.jsonl").read_text()
    assert "h-" in rejected  # the patient-named folder and the accession-named file appear only as keyed hashes
    assert not any(secret in rejected for secret in secrets)
