"""Hostile input around the files: each case ends in one line or a named rejection,
never a traceback, a hang or a write outside the output folder. And the loading rules:
no pickle in medseq's artifacts, Keras only with safe_mode."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, SAMPLES, medseq, one_line

pytestmark = pytest.mark.reliability
SERIES = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA*/ST*/SE000003"))


def convert(input_dir: Path, labels: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return medseq("convert", "--input", str(input_dir), "--labels", str(labels), "--out", str(out),
                  "--runner=DirectRunner")


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def two_series(tmp_path) -> Path:
    root = tmp_path / "in"
    for i, series in enumerate(SERIES[:2]):
        shutil.copytree(series, root / f"s{i}")
    return root


def test_symlink_loops_and_links_out_of_the_input_are_not_followed(two_series, tmp_path):
    (two_series / "s0" / "loop").symlink_to(two_series, target_is_directory=True)
    outside = tmp_path / "elsewhere"
    shutil.copytree(SERIES[2], outside)
    (two_series / "s1" / "escape.dcm").symlink_to(next(outside.iterdir()))
    result = convert(two_series, SAMPLES / "cine_ef" / "labels.csv", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rows] == ["outside_input"] and rows[0]["path"] == "s1/escape.dcm"
    assert sum(json.loads((tmp_path / "out" / "qc.json").read_text())["records"].values()) == 2


def test_path_traversal_in_labels_writes_nothing_outside_and_bad_class_names_are_one_line(two_series, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text((SAMPLES / "cine_ef" / "labels.csv").read_text() + "../../../../tmp/evil,normal\n")
    before = tree(tmp_path)
    result = convert(two_series, labels, tmp_path / "out")
    assert result.returncode == 0 and "series in the labels file are not in the input" in result.stdout
    assert {p for p in tree(tmp_path) - before if not p.startswith("out")} == set()
    qc = json.loads((tmp_path / "out" / "qc.json").read_text())
    assert qc["labels_csv"]["found"] == 2 and qc["labels_csv"]["not_found"] == qc["labels_csv"]["rows"] - 2
    labels.write_text("series_instance_uid,label\n1.2.3,../../etc/cron.d/x\n")
    assert "line 2: expected a class name of letters" in one_line(convert(two_series, labels, tmp_path / "o2"))


def test_conflicting_duplicate_and_non_utf8_labels_are_one_line_without_the_uid(two_series, tmp_path):
    labels = tmp_path / "labels.csv"
    uid = "1.2.826.0.1.3680043.8.498.12345"
    labels.write_text(f"series_instance_uid,label\n{uid},normal\n2.3,normal\n{uid},reduced_ef\n")
    line = one_line(convert(two_series, labels, tmp_path / "out"))
    assert "lines 2 and 4 give one series two labels ('normal' and 'reduced_ef')" in line and uid not in line
    labels.write_bytes(b"series_instance_uid,label\n1.2.3,norm\xe9l\n")
    assert "expected UTF-8 text, found a byte that is not (0xe9 at byte" in one_line(
        convert(two_series, labels, tmp_path / "out"))


def test_empty_input_and_unwritable_output_are_one_line(two_series, tmp_path):
    (tmp_path / "empty").mkdir()
    labels = SAMPLES / "cine_ef" / "labels.csv"
    assert one_line(convert(tmp_path / "empty", labels, tmp_path / "out")).startswith(
        "medseq convert: no files found in")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert "cannot create the output folder" in one_line(convert(two_series, labels, blocker / "out"))


def test_a_config_cannot_point_the_served_model_out_of_the_run_folder(tmp_path):
    for bad in ({"push": {"serving_dir": "../../srv"}}, {"push": {"model_name": "../x"}}):
        config = tmp_path / "c.yaml"
        config.write_text(json.dumps(bad))
        line = one_line(medseq("run", "--config", str(config), "--out", str(tmp_path / "run")))
        assert "push." in line and "expected" in line
    assert not (tmp_path / "run").exists()


def test_no_pickle_and_keras_only_in_safe_mode():
    """medseq's artifacts are JSON, protobuf, TFRecord, SavedModel and HTML: nothing
    executes code when loaded."""
    sources = [p for top in ("pipeline", "components") for p in (REPO / top).rglob("*.py")]
    text = {p: p.read_text() for p in sources}
    assert not [p for p, t in text.items() if "import pickle" in t or "cPickle" in t or "dill" in t]
    assert not [p for p, t in text.items() if "safe_mode=False" in t or "allow_pickle=True" in t]
    loads = [p for p, t in text.items() if "load_model(" in t]
    assert all("safe_mode=True" in text[p] for p in loads)


def test_a_glob_input_is_not_mistaken_for_links_out_of_the_input(tmp_path):
    pattern = str(SAMPLES / "cine_ef" / "dicom" / "PA00000[0-4]" / "**")
    result = convert(Path(pattern), SAMPLES / "cine_ef" / "labels.csv", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    qc = json.loads((tmp_path / "out" / "qc.json").read_text())
    assert sum(qc["records"].values()) == 5 and "outside_input" not in qc["rejected"]
