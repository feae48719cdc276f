"""One stage contract: every stage has one entry of one shape, and a Beam option given on
the command line reaches the pipeline options of every Beam stage, from its own command
and from `medseq run` (tests/pipeline/test_run.py checks the latter)."""

from __future__ import annotations

import importlib
import inspect

import pytest

from helpers import PROBE, SAMPLES, auc_gate, record_beam_pipelines
from medseq.components.io.beam import FN_API_RUNNER
from medseq.pipeline import cli

STAGES = ("ingest", "validate", "train", "evaluate", "push")


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_one_entry_of_one_shape(stage):
    component = importlib.import_module(f"medseq.components.{stage}")
    params = list(inspect.signature(component.run).parameters)
    assert params == ["config", "inputs", "out", "beam_args"], stage
    assert inspect.signature(component.run).return_annotation.endswith("Outputs")


@pytest.mark.slow
def test_a_beam_option_reaches_every_beam_stage_from_its_own_command(tmp_path, monkeypatch, cine_records, trained):
    built = record_beam_pipelines(monkeypatch)
    probe = f"--experiments={PROBE}"
    convert = ["convert", "--input", str(SAMPLES / "cine_ef" / "dicom"), "--labels",
               str(SAMPLES / "cine_ef" / "labels.csv"), "--out", str(tmp_path / "ingest"), "--hash-key-file"]
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    assert cli.main([*convert, str(key), probe]) == 0
    assert cli.main(["validate", "--examples", str(cine_records), "--out", str(tmp_path / "validate"), probe]) in (0, 1)
    gate = auc_gate(tmp_path / "eval.pbtxt", 0.0)
    assert cli.main(["evaluate", "--examples", str(cine_records), "--model", trained.model_dir, "--eval-config", gate,
                     "--out", str(tmp_path / "evaluate"), probe]) in (0, 1)
    stages = {stage for stage, _, _ in built}
    assert stages == {"ingest", "validate", "evaluate"}, built
    assert all(PROBE in experiments for _, experiments, _ in built), built
    # Every pipeline, TFMA's included, runs on the documented default (the FnApiRunner, not
    # Beam's switching DirectRunner and its Prism probe).
    assert {runner for _, _, runner in built} == {FN_API_RUNNER}, built
