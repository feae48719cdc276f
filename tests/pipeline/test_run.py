"""`medseq run` end to end: every stage on the sample set, then again against the served model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from helpers import ARTIFACTS, PROBE, SAMPLES, auc_gate, record_beam_pipelines, render_in_chromium
from medseq.pipeline import cli
from medseq.pipeline import features as F
from medseq.pipeline.run_record import RECORD_FILE

FAST = {
    "input": str(SAMPLES / "cine_ef" / "dicom"),
    "labels": str(SAMPLES / "cine_ef" / "labels.csv"),
    "ingest": {"split": {"train": 0.6, "eval": 0.2, "test": 0.2}},
    "preprocess": {"frames": 8, "height": 32, "width": 32, "min_frames": 2,
                   "windows": {"MR": ["percentile"], "default": ["header"]}},
    "validate": {"max_label_linf": 0.5},
    "train": {"epochs": 1, "conv_filters": [4], "lstm_units": 4},
}


def reused(out: str) -> list[str]:
    """The stages a run's console says it reused."""
    lines = out.splitlines()
    return [line.split("]")[1].split(":")[0].strip() for line, nxt in zip(lines, lines[1:], strict=False)
            if line.startswith("[") and nxt.strip().startswith("reused")]


@pytest.mark.slow
def test_run_records_every_stage_reuses_what_is_unchanged_and_reruns_from_a_stage(tmp_path, capsys, monkeypatch):
    eval_config = auc_gate(tmp_path / "eval.pbtxt", 0.0, -1.0)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**FAST, "evaluate": {"eval_config": str(eval_config)}}))
    run = tmp_path / "run"
    command = ["run", "--config", str(config), "--out", str(run), "--runner=DirectRunner", f"--experiments={PROBE}"]
    built = record_beam_pipelines(monkeypatch)
    assert cli.main(command) == 0
    assert "served model at" in capsys.readouterr().out
    # The Beam option given to `medseq run` reached every Beam stage's pipeline.
    assert {stage for stage, _, _ in built} == {"ingest", "validate", "evaluate"}, built
    assert all(PROBE in experiments for _, experiments, _ in built), built
    for stage in ("ingest/qc.json", "validate/stats.json", "train/model/saved_model.pb", f"evaluate/{F.BLESSED}",
                  "serving/medseq/1/saved_model.pb", "serving/models.config", "hash.key", "report.html"):
        assert (run / stage).exists(), stage
    record = json.loads((run / RECORD_FILE).read_text())
    assert list(record["stages"]) == ["ingest", "validate", "train", "evaluate", "push"]
    for name, entry in record["stages"].items():
        assert entry["status"] == "done" and entry["ended"] >= entry["started"], name
        assert all(v.startswith(("sha256:", "none", "uri:")) for v in entry["outputs"].values()), name
    assert record["stages"]["train"]["inputs"] == record["stages"]["ingest"]["outputs"]
    assert record["outcome"]["served"].endswith("serving/medseq/1") and record["package_versions"]["tensorflow"]
    assert "Frames per class" not in (run / "report.html").read_text()  # real data: no pixels in the report

    assert cli.main(command) == 0  # nothing changed: every stage reused, nothing pushed again
    assert reused(capsys.readouterr().out) == ["ingest", "validate", "train", "evaluate", "push"]
    assert sorted(p.name for p in (run / "serving" / "medseq").iterdir()) == ["1"]

    config.write_text(yaml.safe_dump({**FAST, "evaluate": {"eval_config": str(eval_config)},
                                      "train": {**FAST["train"], "epochs": 2}}))
    assert cli.main(command) == 0  # a train key changed: train and what follows rerun, against version 1
    assert reused(capsys.readouterr().out) == ["ingest", "validate"]
    verdict = json.loads((run / "evaluate" / F.BLESSED).read_text())
    assert verdict["baseline"].endswith("serving/medseq/1") and (run / "serving" / "medseq" / "2").is_dir()

    assert cli.main([*command, "--from", "evaluate"]) == 0
    assert reused(capsys.readouterr().out) == ["ingest", "validate", "train"]
    assert cli.main([*command, "--only", "validate"]) == 0
    out = capsys.readouterr().out
    assert reused(out) == ["ingest"] and "[3/5] train" not in out and "no anomalies" in out


@pytest.mark.slow
def test_run_stops_at_validate_on_anomalies(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**FAST, "validate": {"max_label_linf": 0.0}}))
    assert cli.main(["run", "--config", str(config), "--out", str(tmp_path / "run"), "--runner=DirectRunner"]) == 1
    err = capsys.readouterr().err
    assert "validate found 1 anomaly; the run stops here" in err and "label_skew" in err
    assert not (tmp_path / "run" / "train").exists()


def test_synthetic_input_is_written_once_and_reused_while_its_section_is_unchanged(tmp_path):
    from medseq.pipeline.config import SynthConfig
    from medseq.pipeline.stages import synthetic_input

    section = SynthConfig(task="ct_nodule", patients=2, seed=4, small=True)
    folder, reused = synthetic_input(section, tmp_path)
    assert not reused and (folder / "labels.csv").exists() and any((folder / "dicom").rglob("IM*"))
    stamp, two = (folder / "labels.csv").stat().st_mtime_ns, (folder / "labels.csv").read_text().splitlines()
    assert synthetic_input(section, tmp_path) == (folder, True)
    assert (folder / "labels.csv").stat().st_mtime_ns == stamp
    _, reused = synthetic_input(SynthConfig(task="ct_nodule", patients=3, seed=4, small=True), tmp_path)
    assert not reused and len((folder / "labels.csv").read_text().splitlines()) > len(two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no partial folder left


def test_a_config_without_input_or_synth_is_one_line(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("synth: null\ntrain: {epochs: 1}\n")  # the shipped synth section set aside, no input
    assert cli.main(["run", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "expected `input` and `labels` (your DICOM and its labels.csv) or a `synth` section" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_a_run_killed_in_training_keeps_a_true_record_and_resumes_there(tmp_path):
    eval_config = auc_gate(tmp_path / "eval.pbtxt")
    settings = {k: v for k, v in FAST.items() if k not in ("input", "labels")}
    settings.update(synth={"task": "cine_ef", "patients": 40, "seed": 1, "small": True},
                    train={**FAST["train"], "epochs": 4, "batch_size": 1, "checkpoint_every_steps": 2},
                    evaluate={"eval_config": str(eval_config)})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "medseq.pipeline.cli", "run", "--config", str(config), "--out", str(run),
               "--runner=DirectRunner"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(list((run / "train" / "checkpoints").glob("ckpt-*.index"))) < 3:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    record = json.loads((run / RECORD_FILE).read_text())  # whole: it is replaced atomically
    assert record["stages"]["ingest"]["status"] == "done" and record["stages"]["train"]["status"] == "running"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert reused(resumed.stdout) == ["synth", "ingest", "validate"]
    assert "resumed at step" in resumed.stdout and "I0000" not in resumed.stderr
    record = json.loads((run / RECORD_FILE).read_text())
    assert record["stages"]["train"]["status"] == "done" and record["outcome"]["served"]
    assert "Frames per class" in (run / "report.html").read_text()  # synthetic data: strips shown
    dom = render_in_chromium(run / "report.html", ARTIFACTS / "run_report.png", height=3400)
    qc = json.loads((run / "ingest" / F.QC_FILE).read_text())
    verdict = json.loads((run / "evaluate" / F.BLESSED).read_text())
    assert 'id="outcome">BLESSED' in dom and 'id="decision">BLESSED<' in dom
    assert f'<td class="n">{qc["records"]["train"]}</td>' in dom and "unlabeled" in dom
    assert f"{verdict['metrics']['auc']:.4f}" in dom and "Does the model use time?" in dom
    assert dom.count("data:image/png;base64,") >= 9 and "model fingerprint" in dom  # curves, plots, strips, card
    assert "Where the model looked" in dom and "predicted" in dom  # Grad-CAM overlays of the held-out series


def test_run_if_new_starts_again_only_when_the_input_changed(tmp_path, capsys):
    """A folder input: `--if-new` starts no run while the DICOM and the labels are what
    the last ingest read (one line, exit 0); changed labels start one."""
    import shutil

    labels = tmp_path / "labels.csv"
    shutil.copy(FAST["labels"], labels)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**FAST, "labels": str(labels)}))
    command = ["run", "--config", str(config), "--out", str(tmp_path / "run"), "--only", "ingest", "--if-new"]
    assert cli.main(command) == 0
    assert "[1/5] ingest" in capsys.readouterr().out
    assert cli.main(command) == 0
    quiet = capsys.readouterr().out
    assert quiet.startswith("run: nothing new: ") and quiet.rstrip().endswith("no run started")
    labels.write_text(labels.read_text() + "\n")
    assert cli.main(command) == 0
    assert "[1/5] ingest" in capsys.readouterr().out
    record = json.loads((tmp_path / "run" / RECORD_FILE).read_text())  # two runs started, each with its id
    assert [r["run_id"] for r in record["runs"]][-1] == record["run_id"] and len(record["runs"]) == 2
    assert len({r["run_id"] for r in record["runs"]}) == 2 and record["runs"][-1]["blessed"] is False
