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


def _streamed(model, source, **options) -> list:
    from medseq.components.predict.stream import stream

    return list(stream(model, source, outside_domain="warn", **options))


@pytest.mark.slow
def test_a_real_ultrasound_clip_streams_frame_by_frame_under_every_runtime(frames_run, tmp_path, capsys):
    """pydicom's real 30-frame ultrasound clip, frame by frame, with its ultrasound-region
    policy: under the SavedModel's predict_step, LiteRT and ONNX the score at every frame
    is the whole-series score `medseq predict` gives (same preprocessing, T = 40 holds
    all 30); pydicom-data's 120-frame cine streams whole, its first 40 frames scored as the
    whole-sequence model scores them."""
    import shutil
    import time

    from pydicom.data import get_testdata_file

    from medseq.components.model import runtimes
    from medseq.components.predict import predict

    served = frames_run / "serving" / "medseq" / "1"
    edge = served / "assets.extra" / "edge"
    card = json.loads((served / "assets.extra" / "medseq_model.json").read_text())
    assert card["streaming"]["streams"] and F.STEP_SIGNATURE in card["network_data_format"]["signatures"]
    for artifact in card["artifacts"]:  # each format's step passed its own parity gate
        assert artifact["step"]["parity"]["passed"] and artifact["step"]["parity"]["max_abs_diff"] <= 1e-5
    clip = tmp_path / "clip"
    clip.mkdir()
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), clip)
    whole = predict(served, clip, outside_domain="warn")[0].frame_values
    assert len(whole) == 30
    capsys.readouterr()
    for model in (served, edge / "model_fp32.tflite", edge / "model_fp32_step.onnx"):
        out = _streamed(model, clip / "examples_ybr_color.dcm")
        assert [o.frame for o in out] == list(range(30))
        assert "modality US, trained on MR" in out[0].domain and not out[1].domain  # told once, then streamed
        assert np.allclose(np.diff([o.time_ms for o in out]), 1000 / 30, atol=0.01)  # its Frame Time
        np.testing.assert_allclose([o.frame_value for o in out], whole, atol=1e-5)
    # The CLI, paced as the clip was recorded (30 frames at 30 fps: at least its second).
    started = time.monotonic()
    assert cli.main(["stream", "--model", str(edge / "model_fp32.onnx"), "--input",
                     str(clip / "examples_ybr_color.dcm"), "--realtime", "--outside-domain", "warn"]) == 0
    assert time.monotonic() - started >= 29 / 30
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([line["frame_value"] for line in lines], whole, atol=1e-5)
    cine = _streamed(edge / "model_fp32.tflite", get_testdata_file("color3d_jpeg_baseline.dcm"))
    assert [o.frame for o in cine] == list(range(120)) and all(o.latency_ms > o.step_ms > 0 for o in cine)
    first = np.stack([o.model_input for o in cine[:40]])
    expected = runtimes.load(served)(first[None], np.array([40], np.int32))[0]
    np.testing.assert_allclose([o.frame_value for o in cine[:40]], expected, atol=1e-5)


@pytest.mark.slow
def test_medseq_stream_follows_a_folder_being_written_and_skips_what_it_cannot_read(frames_run, tmp_path, capsys):
    """A series' files written one by one into a folder, a truncated file among them: the
    followed stream prints a JSON line per frame, reports the broken file and goes on,
    and scores each frame as the stream of the finished folder does; the events it
    confirms as they pass are those of the series."""
    import threading
    import time

    import pydicom

    served = frames_run / "serving" / "medseq" / "1"
    series = next((frames_run / "synth" / "dicom").glob("PA*/ST*/SE000003"))
    files = sorted(series.iterdir(), key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    capsys.readouterr()
    assert cli.main(["stream", "--model", str(served), "--input", str(series)]) == 0
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["frame"] for d in done] == list(range(len(files)))
    live = tmp_path / "live"
    live.mkdir()

    def acquire() -> None:
        for i, path in enumerate(files):
            (live / f"{i:04d}.dcm").write_bytes(path.read_bytes())
            if i == 5:
                (live / "0005b.dcm").write_bytes(path.read_bytes()[:400])  # cut off mid-header
            time.sleep(0.06)

    writer = threading.Thread(target=acquire)
    writer.start()
    assert cli.main(["stream", "--model", str(served), "--input", str(live), "--follow", "--idle-timeout", "2"]) == 0
    writer.join()
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    skipped = [line for line in lines if line.get("skipped")]
    read = [line for line in lines if not line.get("skipped")]
    assert len(skipped) == 1 and skipped[0]["rejected"] == "no_pixel_data", skipped  # it ends before its pixels
    assert [d["frame"] for d in read] == list(range(len(files)))
    np.testing.assert_allclose([d["frame_value"] for d in read], [d["frame_value"] for d in done], atol=1e-6)
    assert "1 frame(s) could not be read" in captured.err
    confirmed = [e for d in done for e in d.get("events", [])]
    assert {e["event"] for e in confirmed} <= {"ed", "es"} and confirmed, done


@pytest.mark.slow
def test_a_tf_serving_client_carries_the_state_from_request_to_request(frames_run):
    """PredictRequests to predict_step, as docs/serving.md's client sends them (the state
    from the model card, zeros to start, each answer's state into the next request),
    through the pushed version as TF Serving runs them: two streams at once get
    predict_frames' scores at every frame; the warm-up replays predict_step too."""
    from medseq.components.io.examples import eval_dataset, load_spec, split_files
    from medseq.components.push.warmup import WARMUP_FILE, read_warmup, run_request, step_request

    served = frames_run / "serving" / "medseq" / "1"
    card = json.loads((served / "assets.extra" / "medseq_model.json").read_text())
    loaded = tf.saved_model.load(str(served))
    spec = load_spec(served)
    inputs, _ = next(iter(eval_dataset(split_files(frames_run / "ingest", "eval"), spec, 2)))
    clips, valid = inputs[F.FRAMES].numpy(), inputs[F.VALID_FRAMES].numpy()
    expected = loaded.signatures[F.FRAMES_SIGNATURE](frames=tf.constant(clips),
                                                     valid_frames=tf.constant(valid))[F.FRAME_VALUES].numpy()
    state = {name: np.zeros([2, *t["shape"][1:]], np.float32) for name, t in card["streaming"]["state"].items()}
    scores = []
    for t in range(int(valid.min())):
        out = run_request(loaded, step_request("medseq", clips[:, t], state))
        scores.append(out["frame_value"])
        state = {name: out[name] for name in state}
    np.testing.assert_allclose(np.stack(scores, axis=1), expected[:, :int(valid.min())], atol=1e-5)
    warmups = {r.model_spec.signature_name for r in read_warmup(served / "assets.extra" / WARMUP_FILE)}
    assert F.STEP_SIGNATURE in warmups
    for request in read_warmup(served / "assets.extra" / WARMUP_FILE):
        run_request(loaded, request)


@pytest.mark.slow
def test_the_frames_report_renders_per_frame_curves_in_a_browser(frames_run):
    dom = render_in_chromium(frames_run / "evaluate" / "report.html", ARTIFACTS / "frames_report.png")
    assert "BLESSED" in dom and "events per frame ed, es" in dom and "event_error" in dom
    # The per-frame curves with the labeled frames marked, and the domain score's distributions.
    assert dom.count('alt="plot"') == 2 and "Does the model know its domain?" in dom
    run_dom = render_in_chromium(frames_run / "report.html", ARTIFACTS / "frames_run_report.png")
    assert "ed key frames" in run_dom and "eval_frame_mae" in run_dom
