"""Events per frame (train.target: frames) through every stage: synthetic cine MR of
several beats from any start phase, where only the end-diastolic and end-systolic frames
are labeled (frame_labels.csv, as EchoNet traces them). `medseq run` end to end with a
causal model (ingest, validate, train, evaluate with TFMA, push with LiteRT and ONNX
artifacts through their parity gates); the served model answers a score per frame, and
`medseq predict` reads the events back in source frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import ARTIFACTS, medseq_run, render_in_chromium, served_answers
from medseq.components.evaluate.inference import PREDICTIONS_FILE, EvalPredictions
from medseq.components.model.events import frame_metrics
from medseq.pipeline import cli
from medseq.pipeline import features as F


@pytest.fixture(scope="module")
def frames_run(tmp_path_factory):
    return medseq_run(tmp_path_factory.mktemp("frames"), {
        "synth": {"task": "cine_phase", "patients": 120, "seed": 3, "small": True, "target": "frames"},
        "preprocess": {"frames": 40, "temporal": "pad", "height": 32, "width": 32},
        "train": {"target": "frames", "causal": True, "epochs": 12, "conv_filters": [8, 16], "lstm_units": 16,
                  "augment": ["flip", "rot90"], "batch_size": 8},
        "evaluate": {"bootstrap_samples": 300},
        "push": {"formats": ["litert:fp32", "onnx:fp32"]},
    })


@pytest.mark.slow
def test_a_frames_model_finds_end_diastole_and_end_systole_and_uses_time(frames_run):
    qc = json.loads((frames_run / "ingest" / F.QC_FILE).read_text())
    assert qc["target"] == {"kind": "frames", "events": ["ed", "es"]} and qc["classes"] == ["ed", "es"]
    assert qc["labels"]["train"]["ed"] > 0 and qc["frame_labels"]["train"]["labeled_frames"] > 0
    verdict = json.loads((frames_run / "evaluate" / F.BLESSED).read_text())
    metrics, intervals = verdict["metrics"], verdict["intervals"]
    assert verdict["target"] == "frames" and verdict["events"] == ["ed", "es"]
    # Held-out patients: the events within about a source frame, the whole interval under the gate's 2.
    assert metrics["event_error"] < 1.5 and intervals["event_error"][1] <= 2.0, metrics
    assert metrics["events_missed"] < 0.1 and metrics["event_error_ms"] > 0
    # TFMA's event error (medseq's TFMA metric over each series' summary) is medseq's own number.
    preds = EvalPredictions.from_json(json.loads((frames_run / "evaluate" / PREDICTIONS_FILE).read_text()))
    exact = frame_metrics(preds.probs["frames"], preds.labels)
    assert metrics["event_error"] == pytest.approx(exact["event_error"], abs=1e-4)
    assert metrics["frame_mae"] == pytest.approx(exact["frame_mae"], abs=1e-4)
    # Time taken away: shuffled frames put the turning points anywhere, one frame has none.
    temporal = verdict["temporal"]
    assert temporal["metric"] == "event_error"
    assert temporal["shuffled"]["value"] > temporal["frames"]["value"] + 1.0
    assert temporal["one_frame"]["value"] > temporal["frames"]["value"] + 2.0


@pytest.mark.slow
def test_the_served_frames_model_answers_per_frame_through_every_door(frames_run, capsys):
    served, card, _, out = served_answers(frames_run, 3)
    assert card["target"] == {"kind": "frames", "events": ["ed", "es"], "causal": True}
    assert set(card["network_data_format"]["outputs"]) == {F.FRAME_VALUES}
    assert sorted(a["format"] for a in card["artifacts"]) == ["litert", "onnx"]  # both passed their parity gate
    assert set(out) == {F.FRAME_VALUES, F.DOMAIN_SCORE} and out[F.FRAME_VALUES].shape == (3, 40)
    # `medseq predict` reads the events back in source frames; ONNX gives the same.
    series = next((frames_run / "synth" / "dicom").glob("PA*/ST*/SE000003"))
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(served), "--input", str(series), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(answer["events"]) == {"ed", "es"} and len(answer["frame_values"]) >= 24
    assert all("ms" in e for e in answer["events"]["ed"])
    onnx = served / "assets.extra" / "edge" / "model_fp32.onnx"
    assert cli.main(["predict", "--model", str(onnx), "--input", str(series), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.allclose(again["frame_values"], answer["frame_values"], atol=1e-4)
    assert cli.main(["predict", "--model", str(served), "--input", str(series)]) == 0
    assert "ed at " in capsys.readouterr().out


@pytest.mark.slow
def test_the_causal_model_answers_frame_t_from_frames_up_to_t(frames_run):
    """Changing the frames after t leaves every answer up to t as it was: a live clip can
    be read as it plays."""
    served = frames_run / "serving" / "medseq" / "1"
    predict = tf.saved_model.load(str(served)).signatures[F.FRAMES_SIGNATURE]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 40, 32, 32, 1), dtype=np.uint8)
    later = frames.copy()
    later[:, 20:] = rng.integers(0, 256, later[:, 20:].shape, dtype=np.uint8)
    a = predict(frames=tf.constant(frames), valid_frames=tf.constant([40]))[F.FRAME_VALUES].numpy()
    b = predict(frames=tf.constant(later), valid_frames=tf.constant([40]))[F.FRAME_VALUES].numpy()
    assert np.allclose(a[0, :20], b[0, :20], atol=1e-5) and not np.allclose(a[0, 20:], b[0, 20:], atol=1e-3)
    # The same series cut to its first 20 frames answers the same for them.
    c = predict(frames=tf.constant(frames), valid_frames=tf.constant([20]))[F.FRAME_VALUES].numpy()
    assert np.allclose(a[0, :20], c[0, :20], atol=1e-5)


@pytest.mark.slow
def test_the_frames_report_renders_per_frame_curves_in_a_browser(frames_run):
    dom = render_in_chromium(frames_run / "evaluate" / "report.html", ARTIFACTS / "frames_report.png")
    assert "BLESSED" in dom and "events per frame ed, es" in dom and "event_error" in dom
    assert dom.count('alt="plot"') == 1  # the per-frame curves with the labeled frames marked
    run_dom = render_in_chromium(frames_run / "report.html", ARTIFACTS / "frames_run_report.png")
    assert "ed key frames" in run_dom and "eval_frame_mae" in run_dom
