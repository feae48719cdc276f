"""A user's mistakes end in one line, never a traceback: a labels cell past csv's field
limit, a config nested too deeply or an alias bomb, a hash key that is not UTF-8 (taken
as the bytes it is) or all white space (refused), and the CLI's own flags after the
command. And one rule hashes every reported path, whatever a file's own header says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from helpers import KEY, SAMPLES, medseq, one_line
from medseq.pipeline import cli

pytestmark = pytest.mark.reliability
SERIES = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))


@pytest.fixture
def series(tmp_path) -> Path:
    root = tmp_path / "in"
    shutil.copytree(SERIES[0], root / "s0")
    return root


def test_a_labels_cell_past_the_csv_field_limit_is_one_line(series, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("series_instance_uid,label\n1.2.3," + "x" * 200_000 + "\n")
    line = one_line(medseq("convert", "--input", str(series), "--labels", str(labels), "--out", str(tmp_path / "o")))
    assert "line 2: not valid CSV (field larger than field limit" in line


def test_a_config_nested_too_deeply_or_an_alias_bomb_is_one_line_at_once(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("train: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert "nested too deeply" in one_line(medseq("run", "--config", str(deep), "--out", str(tmp_path / "r")))
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 1024
    started = time.monotonic()
    line = one_line(medseq("run", "--config", str(bomb), "--out", str(tmp_path / "r")))
    assert "expands to more than 100,000 values (YAML aliases)" in line and time.monotonic() - started < 60
    assert not (tmp_path / "r").exists()


def test_hash_keys_any_bytes_taken_white_space_refused(series, tmp_path):
    base = {k: v for k, v in os.environ.items() if k != "MEDSEQ_HASH_KEY"}
    labels = str(SAMPLES / "cine_ef" / "labels.csv")
    args = ("convert", "--input", str(series), "--labels", labels)
    binary = {k.encode(): v.encode() for k, v in base.items()} | {b"MEDSEQ_HASH_KEY": bytes(range(200, 240))}
    done = subprocess.run([sys.executable, "-m", "medseq.pipeline.cli", *args, "--out", str(tmp_path / "a")],
                          capture_output=True, text=True, env=binary, timeout=180)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    spaces = one_line(medseq(*args, "--out", str(tmp_path / "b"), env={**base, "MEDSEQ_HASH_KEY": " " * 16}))
    assert "too short" in spaces and "found 0" in spaces


def test_the_clis_own_flags_after_the_command_are_its_own_not_beams(monkeypatch, tmp_path):
    from medseq.components import ingest

    seen = {}

    def fake_run(config, inputs, out, beam_args=()):
        seen["beam_args"] = list(beam_args)
        raise SystemExit(0)

    monkeypatch.setattr(ingest, "run", fake_run)
    monkeypatch.setattr(cli, "_quiet_libraries", lambda verbose: seen.setdefault("verbose", verbose))
    with pytest.raises(SystemExit):
        cli.main(["convert", "--input", str(tmp_path), "--labels", str(tmp_path / "l.csv"), "--out",
                  str(tmp_path / "o"), "-v"])
    assert seen == {"verbose": True, "beam_args": []}  # before: ["-v"], handed to Beam, which ran the job
    with pytest.raises(SystemExit) as refused:
        cli.main(["convert", "--input", "x", "--labels", "y", "--out", "z", "-q"])
    assert refused.value.code == 2


def test_every_reported_path_follows_one_rule_whatever_a_files_own_header_says(tmp_path):
    """A broken file in a folder named after a patient shows that folder hashed, as the
    readable series of the same patient does; so does predict; no transfer syntax UID's
    text reaches a message."""
    from medseq.components.io import deid
    from medseq.components.predict import prepare_folder
    from medseq.components.preprocessing import decode
    from medseq.components.preprocessing.reasons import Rejected
    from medseq.pipeline.config import PreprocessConfig

    root = tmp_path / "in"
    name = "ZZPROBE^ALICE"
    for folder, broken in (("Alice_Zzprobe", False), ("Alice_Zzprobe 0", True)):
        target = root / folder / ("BROKEN" if broken else "CINE")
        shutil.copytree(SERIES[0], target)
        for path in sorted(target.iterdir()):
            ds = pydicom.dcmread(path)
            ds.PatientName = name
            ds.save_as(path)
        if broken:
            for path in sorted(target.iterdir())[1:]:
                path.unlink()
            path = next(target.iterdir())
            path.write_bytes(path.read_bytes()[:128] + b"DICM" + b"\x00" * 64)
    private_syntax = "1.2.826.0.1.3680043.99999.1.2.3"
    (root / "private").mkdir()
    series_uid = pydicom.uid.generate_uid()
    for i, path in enumerate(sorted((root / "Alice_Zzprobe" / "CINE").iterdir())[:2]):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = private_syntax
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, pydicom.uid.generate_uid()
        ds.save_as(root / "private" / f"x{i}.dcm", enforce_file_format=True)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"series_instance_uid,label\n{series_uid},normal\n")
    done = medseq("convert", "--input", str(root), "--labels", str(labels), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "out" / "rejected.jsonl").read_text() + done.stdout + done.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rows} == {"unreadable", "unlabeled"}, rows
    assert not any(s in text.lower() for s in ("zzprobe", "alice", private_syntax))
    with pytest.raises(Rejected) as raised, decode._decoding(private_syntax, lambda: 16):
        raise NotImplementedError("no decoder")  # what a codec raises for a syntax it does not know
    assert raised.value.code == "unsupported_transfer_syntax" and private_syntax not in raised.value.message
    assert "outside DICOM's dictionary" in raised.value.message
    named = list(prepare_folder(root, PreprocessConfig(), key=KEY))
    shown = " ".join(p.where for p in named) + " ".join(getattr(p.item, "message", "") for p in named)
    assert not any(s in shown.lower() for s in ("zzprobe", "alice", private_syntax))
    # One rule: the patient's folders are hashed in both outputs, the same way.
    assert {str(r["path"]).split("/")[0] for r in rows} <= {p.where.split("/")[0] for p in named} | {"private"}
    assert deid.safe_path("Alice_Zzprobe 0", KEY, deid.identifier_tokens(name)).startswith("h-")
