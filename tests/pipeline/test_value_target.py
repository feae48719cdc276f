"""A value per series (train.target: value) through every stage: synthetic cine MR whose
label is the ejection fraction in % with 3 EF points of measurement noise, `medseq run`
end to end (ingest, validate, train, evaluate with TFMA, push with LiteRT and ONNX
artifacts through their parity gates, test-time augmentation on), then the served model
answers a value through TF Serving's signature, `medseq predict` and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import ARTIFACTS, medseq_run, render_in_chromium, served_answers
from medseq.components.evaluate.inference import PREDICTIONS_FILE, EvalPredictions
from medseq.components.io.examples import eval_dataset, record_spec, split_files
from medseq.components.model.intervals import value_metrics
from medseq.pipeline import cli
from medseq.pipeline import features as F
from medseq.pipeline.config import DEFAULT_EVAL_CONFIG_VALUE as GATE


@pytest.fixture(scope="module")
def value_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("value")
    gate = root / "gate.pbtxt"  # the shipped gate with R² >= 0.3 overall: a small eval split, a wide interval
    gate.write_text(GATE.read_text().replace("lower_bound { value: 0.5 }", "lower_bound { value: 0.3 }"))
    return medseq_run(root, {
        "synth": {"task": "cine_ef", "patients": 150, "seed": 5, "small": True, "target": "value", "noise": 3.0},
        "preprocess": {"frames": 16, "height": 32, "width": 32},
        "train": {"target": "value", "value": {"column": "ef", "units": "%", "range": [0, 100]}, "epochs": 15,
                  "conv_filters": [8, 16], "lstm_units": 16, "tta": True},
        "evaluate": {"eval_config": str(gate), "value_cutoffs": [40, 50], "bootstrap_samples": 300},
        "push": {"formats": ["litert:fp32", "onnx:fp32"]},
    })


@pytest.mark.slow
def test_a_value_model_learns_the_ejection_fraction_and_uses_time(value_run):
    verdict = json.loads((value_run / "evaluate" / F.BLESSED).read_text())
    metrics, intervals = verdict["metrics"], verdict["intervals"]
    assert verdict["target"] == "value" and verdict["value"] == {"column": "ef", "units": "%"}
    # Held-out patients: far better than the mean of the train split (R² 0), AUC at EF < 40 high.
    assert metrics["r_squared"] >= 0.4 and intervals["r_squared"][0] > 0.0, metrics
    assert metrics["auc_below_40"] >= 0.85 and "auc_below_50" in metrics
    assert metrics["mean_absolute_error"] < 12.0
    # TFMA's R² (medseq's TFMA metric) is the exact 1 - SSE/SST of the same predictions.
    preds = EvalPredictions.from_json(json.loads((value_run / "evaluate" / PREDICTIONS_FILE).read_text()))
    exact = value_metrics(preds.probs["frames"], preds.labels)
    assert metrics["r_squared"] == pytest.approx(exact["r_squared"], abs=1e-4)
    assert metrics["mean_absolute_error"] == pytest.approx(exact["mean_absolute_error"], abs=1e-3)
    assert metrics["squared_pearson_correlation"] != pytest.approx(metrics["r_squared"], abs=1e-6)
    # Time taken away: one repeated frame leaves nothing to measure an EF from.
    temporal = verdict["temporal"]
    assert temporal["metric"] == "r_squared"
    assert temporal["one_frame"]["value"] < temporal["frames"]["value"] - 0.3
    assert temporal["shuffled"]["value"] < temporal["frames"]["value"]


@pytest.mark.slow
def test_the_served_value_model_answers_through_every_door(value_run, tmp_path, capsys):
    served, card, records, out = served_answers(value_run, 4)
    assert card["target"]["kind"] == "value" and card["target"]["units"] == "%"
    assert set(card["network_data_format"]["outputs"]) == {F.VALUE}
    assert sorted(a["format"] for a in card["artifacts"]) == ["litert", "onnx"]  # both passed their parity gate
    # TF Serving's signature on the record contract returns the value (and the domain score).
    assert set(out) == {F.VALUE, F.DOMAIN_SCORE} and out[F.VALUE].shape == (4,)
    truth = [tf.train.Example.FromString(r).features.feature[F.TARGET].float_list.value[0] for r in records]
    assert np.all(np.abs(out[F.VALUE].numpy() - np.asarray(truth)) < 40)
    # `medseq predict` on one synthetic series, SavedModel and ONNX alike.
    series = next((value_run / "synth" / "dicom").glob("PA*/ST*/SE000003"))
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(served), "--input", str(series), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(answer) >= {"value", "units", F.DOMAIN_SCORE} and answer["units"] == "%" and "label" not in answer
    onnx = served / "assets.extra" / "edge" / "model_fp32.onnx"
    assert cli.main(["predict", "--model", str(onnx), "--input", str(series), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["value"] == pytest.approx(answer["value"], abs=1e-3)
    assert cli.main(["predict", "--model", str(served), "--input", str(series)]) == 0
    assert f"{answer['value']:.4g} %" in capsys.readouterr().out
    # train.tta: the answer is the mean over the square's eight symmetries, so a series turned a
    # quarter and mirrored gets the same value (the ONNX artifact above answered alike).
    records_dir = value_run / "ingest"
    inputs, _ = next(iter(eval_dataset(split_files(records_dir, "eval"), record_spec(records_dir), 4)))
    frames = tf.saved_model.load(str(served)).signatures[F.FRAMES_SIGNATURE]
    turned = np.ascontiguousarray(np.rot90(inputs[F.FRAMES].numpy(), 1, axes=(2, 3))[:, :, :, ::-1])
    np.testing.assert_allclose(frames(frames=tf.constant(turned), valid_frames=inputs[F.VALID_FRAMES])[F.VALUE],
                               frames(**inputs)[F.VALUE], atol=1e-3)


@pytest.mark.slow
def test_the_value_report_renders_agreement_plots_in_a_browser(value_run):
    dom = render_in_chromium(value_run / "evaluate" / "report.html", ARTIFACTS / "value_report.png")
    assert "BLESSED" in dom and "value ef (%)" in dom and "r_squared" in dom and "auc_below_40" in dom
    assert dom.count('alt="plot"') == 4  # predicted against true, Bland-Altman, calibration; the domain score
    run_dom = render_in_chromium(value_run / "report.html", ARTIFACTS / "value_run_report.png")
    assert "mean" in run_dom and "eval_mae" in run_dom
