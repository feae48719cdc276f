"""`medseq compile --kfp`: the config's stages as a KFP v2 pipeline, run by KFP's own local
runner (kfp.local.SubprocessRunner, each step a process of its own) on a tiny synthetic
task: the same records and verdict as `medseq run` with the same config, push under
dsl.If(BLESSED), every step reused from KFP's cache on a second run and run again when
the input changes, each run's identity as KFP metadata, and a failing stage failing the
run with its one line."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import KEY, auc_gate, medseq
from medseq.components.io.examples import split_files
from medseq.pipeline import cli
from medseq.pipeline import features as F
from medseq.pipeline.fingerprints import files_fingerprint

# KFP's local runner warns that the steps' image (medseq:latest) is not what runs them here.
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")


def _tasks(root) -> set[str]:
    """The step folders KFP's local runner made under one run's folder."""
    return {p.name for p in root.iterdir() if p.is_dir()}


def _record(run) -> dict:
    """The run_record step's KFP metadata of one run."""
    executor = json.loads((run / "run-record" / "executor_output.json").read_text())
    return executor["artifacts"]["run"]["artifacts"][0]["metadata"]


def _runs(root, seen: list) -> list:
    """The run folders under `root` made since `seen`, in order."""
    new = sorted((p for p in root.glob("medseq-*") if p not in seen), key=lambda p: p.stat().st_mtime)
    seen += new
    return new


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("kfp")
    (root / "hash.key").write_bytes(KEY)
    config = {
        "synth": {"task": "cine_ef", "patients": 160, "seed": 3, "small": True},
        "preprocess": {"height": 32, "width": 32},
        "ingest": {"hash_key_file": str(root / "hash.key")},
        "train": {"epochs": 12, "conv_filters": [8, 16], "lstm_units": 16},
        "evaluate": {"eval_config": auc_gate(root / "gate.pbtxt", 0.75, -0.02, ("manufacturer",)),
                     "bootstrap_samples": 300},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["compile", "--kfp", str(root / "medseq.yaml"), "--config", str(root / "config.yaml"),
                     "--serving-dir", str(root / "serving")]) == 0
    return root, config


@pytest.fixture(scope="module")
def kfp_run(compiled):
    from kfp import components, local

    root, _ = compiled
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "runs"), enable_caching=True)
    pipeline = components.load_component_from_file(str(root / "medseq.yaml"))  # kfp's own loader
    seen: list = []
    pipeline()
    first, = _runs(root / "runs", seen)
    pipeline()
    again, = _runs(root / "runs", seen)
    return root, first, again


@pytest.mark.slow
def test_the_kfp_pipeline_gives_the_records_and_verdict_of_medseq_run(compiled, kfp_run, tmp_path):
    root, config = compiled
    _, first, _ = kfp_run
    assert {"synth", "ingest-synthetic", "validate", "train", "evaluate"} <= _tasks(first)
    # `medseq run` in a process of its own, as each KFP step runs: in the test process, after
    # other tests, its training took another path (eval AUC 0.942 against 0.971).
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    reference = tmp_path / "run"
    done = medseq("run", "--config", str(tmp_path / "config.yaml"), "--out", str(reference), timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    records = first / "ingest-synthetic" / "records"
    for split in ("train", "eval", "test"):  # the same records, byte for byte
        assert files_fingerprint(split_files(records, split)) == files_fingerprint(
            split_files(reference / "ingest", split)), split
    kfp_verdict = json.loads((first / "evaluate" / "evaluation" / F.BLESSED).read_text())
    run_verdict = json.loads((reference / "evaluate" / F.BLESSED).read_text())
    assert kfp_verdict["decision"] == run_verdict["decision"] == F.BLESSED
    assert [(c["metric"], c["slice"], c["passed"]) for c in kfp_verdict["checks"]] == [
        (c["metric"], c["slice"], c["passed"]) for c in run_verdict["checks"]]
    # Two trainings on a shared CPU need not agree to the last bit; the same model within noise.
    assert kfp_verdict["metrics"]["auc"] == pytest.approx(run_verdict["metrics"]["auc"], abs=0.05)
    # Blessed: push ran under dsl.If and wrote version 1 into the pipeline's serving_dir.
    card = json.loads((root / "serving" / "medseq" / "1" / "assets.extra" / "medseq_model.json").read_text())
    assert card["evaluation"]["decision"] == F.BLESSED
    # What KFP's UI shows: evaluate's metrics, the ROC curve and the confusion matrix.
    executor = json.loads((first / "evaluate" / "executor_output.json").read_text())
    curves = executor["artifacts"]["curves"]["artifacts"][0]["metadata"]
    assert {"confidenceMetrics", "confusionMatrix"} <= set(curves)
    metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["auc"] == pytest.approx(kfp_verdict["metrics"]["auc"])
    assert executor["parameterValues"]["Output"] == F.BLESSED


@pytest.mark.slow
def test_a_second_run_reuses_every_step_from_the_cache_and_records_itself(kfp_run):
    _, first, again = kfp_run
    assert _tasks(again) == {"run-record"}  # only the run's record, never cached, ran again
    ran, reused = _record(first), _record(again)
    assert ran["run_id"] and ran["run_id"] != reused["run_id"]
    assert ran["run_name"] == first.name and reused["run_name"] == again.name
    assert ran["steps"] == dict.fromkeys(("ingest", "validate", "train", "evaluate"), "ran")
    assert reused["steps"] == dict.fromkeys(("ingest", "validate", "train", "evaluate"), "reused")
    assert ran["decision"] == reused["decision"] == F.BLESSED and ran["blessed"] is True
    assert ran["config_sha256"] == reused["config_sha256"] and ran["input"] == "synth"


@pytest.mark.slow
def test_a_recurring_run_does_nothing_until_the_input_changes(tmp_path):
    """A folder input: its fingerprint is ingest's parameter, so an unchanged input reuses
    every step and a changed labels file runs ingest and every step after it again."""
    from kfp import components, local

    from medseq.components import synth

    synth.run("cine_ef", 40, 5, tmp_path / "data", small=True)
    (tmp_path / "hash.key").write_bytes(KEY)
    config = {"input": str(tmp_path / "data" / "dicom"), "labels": str(tmp_path / "data" / "labels.csv"),
              "preprocess": {"height": 32, "width": 32, "frames": 8},
              "ingest": {"hash_key_file": str(tmp_path / "hash.key")}, "validate": {"max_label_linf": 1.0},
              "train": {"epochs": 1, "conv_filters": [8], "lstm_units": 8},
              "evaluate": {"eval_config": auc_gate(tmp_path / "gate.pbtxt", 0.0), "bootstrap_samples": 100}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["compile", "--kfp", str(tmp_path / "medseq.yaml"), "--config", str(tmp_path / "config.yaml"),
                     "--serving-dir", str(tmp_path / "serving")]) == 0
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"), enable_caching=True)
    pipeline, seen = components.load_component_from_file(str(tmp_path / "medseq.yaml")), []
    pipeline()
    first, = _runs(tmp_path / "runs", seen)
    pipeline()
    unchanged, = _runs(tmp_path / "runs", seen)
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text("".join(labels.read_text().splitlines(keepends=True)[:-1]))  # one series fewer
    pipeline()
    changed, = _runs(tmp_path / "runs", seen)
    steps = ("ingest", "validate", "train", "evaluate")
    assert {"fingerprint-input", "ingest", "validate", "train", "evaluate", "run-record"} <= _tasks(first)
    assert _tasks(unchanged) == {"fingerprint-input", "run-record"}
    assert _record(unchanged)["steps"] == dict.fromkeys(steps, "reused")
    assert _record(unchanged)["input"] == _record(first)["input"] != _record(changed)["input"]
    assert _record(changed)["steps"] == dict.fromkeys(steps, "ran")
    assert str(tmp_path / "data") not in json.dumps(_record(first))  # the input by fingerprint, not its paths


@pytest.mark.slow
def test_a_failing_stage_fails_the_run_with_its_one_line(compiled, tmp_path, capfd):
    from kfp import components, local

    root, config = compiled
    broken = {**config, "synth": None, "input": str(tmp_path / "absent"), "labels": str(tmp_path / "labels.csv")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in broken.items() if v is not None}))
    assert cli.main(["compile", "--kfp", str(tmp_path / "broken.yaml"), "--config",
                     str(tmp_path / "config.yaml")]) == 0
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    with pytest.raises(RuntimeError, match="Inner task failed: .*ingest"):
        components.load_component_from_file(str(tmp_path / "broken.yaml"))()
    captured = capfd.readouterr()
    line = next(x for x in (captured.out + captured.err).splitlines() if "medseq ingest: " in x)
    assert line.strip() == f"medseq ingest: labels file not found or not readable: {tmp_path / 'labels.csv'}"
