"""`medseq compile --kfp`: the config's stages as a KFP v2 pipeline, run by KFP's own local
runner (kfp.local.SubprocessRunner, each step a process of its own) on a tiny synthetic
task: the same records and verdict as `medseq run` with the same config, push under
dsl.If(BLESSED), every step reused from KFP's cache on a second run, and a failing
stage failing the run with its one line."""

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
    pipeline()
    first = next((root / "runs").glob("medseq-*"))
    pipeline()
    again = [p for p in (root / "runs").glob("medseq-*") if p != first]  # a run whose every step is cached leaves none
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
def test_a_second_run_reuses_every_step_from_the_cache(kfp_run):
    _, first, again = kfp_run
    assert _tasks(first) and not any(_tasks(p) for p in again)  # no step ran again


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
