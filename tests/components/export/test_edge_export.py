"""LiteRT and ONNX artifacts of a really trained model, behind their parity gates.

Each artifact is run under its own runtime (LiteRT's interpreter, onnxruntime) on the
held-out series and compared with the SavedModel TF Serving runs; one that disagrees is
not written; one that needs ops outside the built-in sets is refused in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medseq.components import predict
from medseq.components.export import EXPORT_FILE, convert, export, parity
from medseq.components.io.examples import SPEC_FILE, load_spec, load_spec_json, record_spec
from medseq.components.model import runtimes
from medseq.components.model.network import build_model
from medseq.pipeline import cli
from medseq.pipeline import features as F
from medseq.pipeline.config import ExportConfig, TrainConfig, from_dict

FORMATS = [("litert", "fp32"), ("onnx", "fp32"), ("litert", "dynamic_int8")]
GATE = ExportConfig()  # the shipped gate (schemas/pipeline.yaml, export:)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, good_model, synthetic_records):
    out = tmp_path_factory.mktemp("edge")
    return export(good_model, synthetic_records, out, FORMATS), out


def test_fp32_artifacts_pass_their_gates_with_builtin_ops_only(exported, good_model, synthetic_records):
    outputs, out = exported
    entries = {(a["format"], a["precision"]): a for a in outputs.artifacts}
    assert {("litert", "fp32"), ("onnx", "fp32")} <= set(entries)
    for (fmt, precision), entry in entries.items():
        data = (out / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        gate = entry["parity"]
        assert gate["passed"] and gate["max_abs_diff"] <= GATE.tolerance[precision]
        assert set(gate["checks"]) == {"eval_batch_8", "batch_1", "short_sequences"} and gate["series"] >= 20
        assert gate["change"] >= GATE.min_auc_change and gate["reference"] > 0.8  # a model that learned
        assert not [op for op in entry["ops"] if op.startswith(("Flex", "CUSTOM", "DELEGATE", "CudnnRNN"))]
        assert entry["runtime"].startswith(runtimes.RUNTIMES[fmt]) and entry["latency"]["batch_8"]["p50_ms"] > 0
    # Dynamic int8 may miss its gate on 25 series; then it is absent, with its figures and reason.
    refused = {(r["format"], r["precision"]): r for r in outputs.refused}
    assert set(entries) | set(refused) == set(FORMATS)
    for key, why in refused.items():
        assert key == ("litert", "dynamic_int8") and why["reason"] and not (out / "model_dynamic_int8.tflite").exists()
    listed = json.loads((out / EXPORT_FILE).read_text())
    assert [a["file"] for a in listed["artifacts"]] == [a["file"] for a in outputs.artifacts]
    assert json.loads((out / SPEC_FILE).read_text()) == load_spec_json(good_model)


def test_an_artifact_runs_the_predict_frames_contract_on_its_own(exported, good_model, synthetic_records):
    """Checked here apart from the gate: held-out series at batch 3, and one frame each."""
    _, out = exported
    spec = load_spec(good_model)
    split = parity.eval_split(synthetic_records, spec)
    frames, valid = split.frames[:3], split.valid[:3]
    served = tf.saved_model.load(good_model).signatures[F.FRAMES_SIGNATURE]
    for name in ("model_fp32.tflite", "model_fp32.onnx"):
        run = runtimes.load(out / name)
        for v in (valid, np.ones_like(valid)):
            want = served(frames=tf.constant(frames), valid_frames=tf.constant(v))[F.PROBABILITIES].numpy()
            got = run(frames, v)
            assert got.shape == (3, len(spec.classes)) and np.abs(got - want).max() < 1e-5, name
            np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_predict_takes_an_artifact_and_gives_the_same_predictions(monkeypatch, exported, good_model,
                                                                 synthetic_records):
    monkeypatch.setenv("MEDSEQ_HASH_KEY", "edge-test-key")  # the same series keys in each call
    _, out = exported
    folder = Path(synthetic_records).parent / "data" / "dicom"
    sub = min(p for p in folder.iterdir() if p.is_dir())  # one patient: its series, and the junk files synth adds
    by_saved = predict.predict(good_model, sub)
    assert [r for r in by_saved if r.series_key and r.rejected is None]
    for name in ("model_fp32.tflite", "model_fp32.onnx"):
        by_artifact = predict.predict(out / name, sub)
        rows = [(r.series, r.series_key, r.label, r.rejected, sorted(r.probabilities)) for r in by_artifact]
        assert rows == [(r.series, r.series_key, r.label, r.rejected, sorted(r.probabilities)) for r in by_saved]
        for a, b in zip(by_artifact, by_saved, strict=True):
            assert all(abs(a.probabilities[c] - b.probabilities[c]) < 1e-5 for c in a.probabilities), name
        assert predict.table(by_artifact).splitlines()[0] == predict.table(by_saved).splitlines()[0]


def test_an_artifact_that_disagrees_with_the_saved_model_is_not_written(monkeypatch, good_model,
                                                                         synthetic_records, tmp_path):
    """The gate on a real disagreement: the artifact is converted from the same architecture
    with freshly initialized weights, the reference is the trained SavedModel."""
    spec = record_spec(synthetic_records)
    config = from_dict(TrainConfig, load_spec_json(good_model)["training"]["config"], "train")
    untrained = build_model(spec, dataclasses.replace(config, mixed_precision="off"))
    monkeypatch.setattr(convert, "rebuild", lambda *_: (untrained, spec))
    outputs = export(good_model, synthetic_records, tmp_path / "edge", [("litert", "fp32"), ("onnx", "fp32")])
    assert not outputs.artifacts and len(outputs.refused) == 2
    for refused in outputs.refused:
        assert "max |Δp|" in refused["reason"] and "\n" not in refused["reason"]
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == [EXPORT_FILE, SPEC_FILE]


def test_a_graph_that_needs_tf_ops_is_refused_in_one_line(good_model):
    """The LSTM left as Keras traces it for serving (a while loop over a TensorList) is
    what LiteRT runs only through Select TF ops: refused, not written."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model, spec = convert.rebuild(good_model, tf.saved_model.load(good_model).variables)
    looped = tf.function(lambda f, v: model({F.FRAMES: f, F.VALID_FRAMES: v}, training=False)).get_concrete_function(
        tf.TensorSpec([None, *spec.shape], tf.uint8), tf.TensorSpec([None], tf.int32))
    with pytest.raises(convert.Refused, match="outside TFLITE_BUILTINS") as refused:
        convert.to_litert(convert_variables_to_constants_v2(looped), "fp32")
    assert "\n" not in str(refused.value)


def test_export_cli_writes_the_artifacts_and_fails_in_one_line(capsys, good_model, synthetic_records, tmp_path):
    out = tmp_path / "edge"
    code = cli.main(["export", "--model", str(Path(good_model).parent), "--examples", str(synthetic_records),
                     "--format", "onnx", "--precision", "fp32", "fp16", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and "export: 1 of 1 artifact(s) written" in captured.out, captured
    assert "onnx fp16 is not offered" in captured.err and (out / "model_fp32.onnx").is_file()
    assert cli.main(["export", "--model", str(tmp_path), "--examples", str(synthetic_records), "--format", "litert",
                     "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected a `medseq train` output folder" in err


def test_the_export_section_sets_the_gate_from_the_config(capsys, good_model, synthetic_records, tmp_path):
    """export.tolerance, export.confidence_level and export.bootstrap_samples reach the gate
    from a config file: a tolerance no runtime can meet refuses the artifact, and the
    interval is reported at the configured level."""
    config = tmp_path / "strict.yaml"
    config.write_text("export:\n  tolerance: {fp32: 1.0e-30, fp16: 1.0e-3, dynamic_int8: 1.0e-2}\n"
                      "  confidence_level: 0.8\n  bootstrap_samples: 200\n")
    out = tmp_path / "edge"
    assert cli.main(["export", "--config", str(config), "--model", str(Path(good_model).parent), "--examples",
                     str(synthetic_records), "--format", "onnx", "--precision", "fp32", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "export: 0 of 1 artifact(s) written" in captured.out, captured
    assert "above the fp32 tolerance 1e-30" in captured.out and ", 80% [" in captured.out, captured.out
    refused = json.loads((out / EXPORT_FILE).read_text())["refused"][0]
    assert refused["parity"]["confidence_level"] == 0.8 and not (out / "model_fp32.onnx").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("export:\n  tolerance: {fp32: 2}\n")
    assert cli.main(["export", "--config", str(bad), "--model", str(Path(good_model).parent), "--examples",
                     str(synthetic_records), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "export.tolerance: expected a value in (0, 1)" in err, err
