"""`preprocess.four_d: volumes` end to end: a synthetic short-axis cine study set runs
through every stage as sequences of volumes (T x D x H x W x C), and the served model
predicts a raw 4-D folder with the same tensor ingest wrote."""

from __future__ import annotations

import json

import pytest

from helpers import auc_gate, medseq_run, write_cine_sax
from medseq.components import predict
from medseq.components.push import model_card
from medseq.pipeline import cli
from medseq.pipeline import features as F

DEPTH = 4


@pytest.mark.slow
def test_a_run_of_volumes_trains_evaluates_pushes_and_predicts_a_raw_4d_folder(tmp_path, capsys):
    run = medseq_run(tmp_path, {
        "synth": {"task": "cine_sax", "patients": 16, "seed": 3, "small": True},
        "ingest": {"split": {"train": 0.5, "eval": 0.25, "test": 0.25}},
        "preprocess": {"frames": 8, "height": 32, "width": 32, "min_frames": 2, "four_d": "volumes", "depth": DEPTH},
        "validate": {"max_label_linf": 1.0},
        "train": {"epochs": 1, "conv_filters": [4], "lstm_units": 4},
        "evaluate": {"eval_config": auc_gate(tmp_path / "eval.pbtxt", 0.0), "temporal_min_drop": -1.0,
                     "bootstrap_samples": 100},
        "push": {"formats": ["litert:fp32", "onnx:fp32"]},
    })
    qc = json.loads((run / "ingest" / F.QC_FILE).read_text())
    assert qc["four_d"]["series"] >= 2 and qc["four_d"]["records"] == qc["four_d"]["series"]
    assert set(qc["rejected"]) <= {"unlabeled", "not_dicom"}, qc["rejected"]
    stats = json.loads((run / "validate" / F.STATS_FILE).read_text())
    assert set(stats["splits"]["train"]["shapes"]) == {f"8x{DEPTH}x32x32x1"}
    assert json.loads((run / "validate" / F.ANOMALIES_FILE).read_text()) == []
    assert (run / "evaluate" / F.BLESSED).exists()
    served = run / "serving" / "medseq" / "1"
    card = json.loads((served / "assets.extra" / model_card.CARD_FILE).read_text())
    assert card["network_data_format"]["inputs"][F.FRAMES]["shape"] == [8, DEPTH, 32, 32, 1]
    assert card["network_data_format"]["inputs"][F.FRAMES]["format"] == "T,D,H,W,C"
    assert (served / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    # push.formats: the blessed run ships both artifacts of the 5-D model, gated, in the version
    assert [(a["format"], a["precision"]) for a in card["artifacts"]] == [("litert", "fp32"), ("onnx", "fp32")]
    assert card["artifacts_refused"] == []
    for artifact in card["artifacts"]:
        assert artifact["inputs"][F.FRAMES]["shape"] == [-1, 8, DEPTH, 32, 32, 1], artifact["inputs"]
        assert artifact["parity"]["passed"] and artifact["parity"]["max_abs_diff"] <= 1e-5
        assert (served / artifact["file"]).stat().st_size == artifact["bytes"]

    write_cine_sax(tmp_path / "raw", one_series=True)
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(served), "--input", str(tmp_path / "raw"), "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["series"] == "." and row["label"] in ("normal", "reduced_ef") and "rejected" not in row
    assert len(predict.predict(served, tmp_path / "raw", explain=True)[0].frame_importance) == 8
    for artifact in card["artifacts"]:  # the artifact predicts the raw folder as the SavedModel does
        assert cli.main(["predict", "--model", str(served / artifact["file"]), "--input", str(tmp_path / "raw"),
                         "--json"]) == 0
        [edge_row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert edge_row["label"] == row["label"]
        assert edge_row["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)
