"""Anomaly detection from normal series (train.target: anomaly) through every stage:
synthetic cine MR whose abnormal class is reduced EF, a model trained on the normal
series alone (its LSTM predicts each next frame), `medseq run` end to end (ingest,
validate, train, evaluate with TFMA, push), then the served model scores series through
TF Serving's signature and `medseq predict` flags the abnormal ones."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from helpers import auc_gate, medseq, medseq_run, one_line, served_answers
from medseq.components.io.examples import RecordSpec, split_files
from medseq.components.model.network import ANOMALY_SCORE, NEXT_FRAME_HEAD, build_model
from medseq.components.train.loop import Trainer
from medseq.pipeline import features as F
from medseq.pipeline.config import TrainConfig

SETTINGS = {"train": {"target": "anomaly", "epochs": 25, "conv_filters": [8, 16], "lstm_units": 16,
                      "batch_size": 4}}


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("anomaly")
    return medseq_run(root, {
        "synth": {"task": "cine_ef", "patients": 200, "seed": 6, "small": True},
        "preprocess": {"frames": 8, "height": 32, "width": 32},
        **SETTINGS,
        "evaluate": {"eval_config": auc_gate(root / "gate.pbtxt", 0.6), "bootstrap_samples": 300},
    })


def _spec(classes: tuple[str, ...] = ("normal", "reduced_ef")) -> RecordSpec:
    return RecordSpec(8, 32, 32, 1, "uint8", classes, target="anomaly", value={"normal": "normal"})


@pytest.mark.slow
def test_a_model_of_normal_series_flags_reduced_ef_on_held_out_patients(anomaly_run):
    verdict = json.loads((anomaly_run / "evaluate" / F.BLESSED).read_text())
    assert verdict["target"] == "anomaly" and verdict["anomaly"]["normal"] == "normal"
    # The score's AUC of normal against reduced EF on patients never trained on.
    assert verdict["metrics"]["auc"] >= 0.75, verdict["metrics"]
    spec = json.loads((anomaly_run / "train" / "model" / "assets.extra" / "medseq_spec.json").read_text())
    assert spec["target"] == "anomaly" and spec["value"] == {"normal": "normal"}
    threshold = spec["training"]["anomaly"]
    assert threshold["threshold"] > threshold["median"] > 0 and threshold["false_alarm"] == 0.05
    # The domain reference is of the normal series alone.
    assert spec["training"]["domain"]["score"]["fitted_on_records"] < spec["training"]["domain"]["records"]


@pytest.mark.slow
def test_the_served_anomaly_model_scores_series_and_predict_flags_the_abnormal_ones(anomaly_run, capsys,
                                                                                   monkeypatch):
    served, card, records, out = served_answers(anomaly_run, 4)
    assert card["target"]["kind"] == "anomaly" and card["target"]["normal"] == "normal"
    assert set(card["network_data_format"]["outputs"]) == {F.ANOMALY_SCORE}
    assert set(out) == {F.ANOMALY_SCORE, F.DOMAIN_SCORE} and out[F.ANOMALY_SCORE].shape == (4,)
    assert np.all(out[F.ANOMALY_SCORE].numpy() >= 0)
    from medseq.pipeline import cli

    names = json.loads((anomaly_run / "ingest" / F.QC_FILE).read_text())["classes"]
    classes = {}  # series key -> class name, from the records of every split
    for split in ("train", "eval", "test"):
        for raw in tf.data.TFRecordDataset(split_files(anomaly_run / "ingest", split), compression_type="GZIP"):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            classes[feature[F.SERIES_KEY].bytes_list.value[0].decode()] = names[feature[F.LABEL].int64_list.value[0]]
    monkeypatch.setenv("MEDSEQ_HASH_KEY", (anomaly_run / "hash.key").read_text().strip())  # the run's own key
    capsys.readouterr()
    # exit 1: synth's one-frame localizers are rejected (too_few_frames) beside the cines
    assert cli.main(["predict", "--model", str(served), "--input", str(anomaly_run / "synth" / "dicom"),
                     "--json"]) == 1
    flagged: dict[str, list[bool]] = {"normal": [], "reduced_ef": []}
    for line in capsys.readouterr().out.strip().splitlines():
        answer = json.loads(line)
        if "rejected" in answer:
            continue
        assert set(answer) >= {"label", F.ANOMALY_SCORE, F.DOMAIN_SCORE} and "probabilities" not in answer
        assert answer["label"] in ("normal", "anomalous")
        if answer["series_key"] in classes:  # a labeled series
            flagged[classes[answer["series_key"]]].append(answer["label"] == "anomalous")
    assert len(flagged["normal"]) > 20 and len(flagged["reduced_ef"]) > 20
    assert np.mean(flagged["reduced_ef"]) > np.mean(flagged["normal"]) + 0.3, flagged


@pytest.mark.slow
def test_an_anomaly_model_refuses_export_and_a_missing_normal_class_in_one_line(anomaly_run, tmp_path):
    model = anomaly_run / "train" / "model"
    result = medseq("export", "--model", str(model), "--examples", str(anomaly_run / "ingest"), "--out",
                    str(tmp_path / "edge"), "--format", "onnx")
    assert result.returncode == 2
    assert one_line(result).endswith("an anomaly model (train.target: anomaly) is served as the SavedModel; "
                                     "expected a class, value or frames model for LiteRT or ONNX (push.formats: [])")
    config = tmp_path / "healthy.yaml"
    config.write_text(yaml.safe_dump({"preprocess": {"frames": 8, "height": 32, "width": 32},
                                      "train": {**SETTINGS["train"], "anomaly": {"normal": "healthy"}}}))
    result = medseq("train", "--config", str(config), "--examples", str(anomaly_run / "ingest"), "--out",
                    str(tmp_path / "train"))
    assert result.returncode == 2
    line = one_line(result)
    assert "train.anomaly.normal: 'healthy', but the train split holds no series of it (its classes: normal " in line
    assert line.endswith("expected the class name of the normal series in labels.csv")


def test_an_anomaly_model_needs_a_unidirectional_lstm():
    with pytest.raises(Exception, match="train.target: anomaly predicts each next frame from the frames before it; "
                                        "expected a unidirectional lstm"):
        TrainConfig(target="anomaly", bidirectional=True)


def test_an_anomaly_model_predicts_each_next_frame_from_the_frames_before_it_only():
    """The predicted change at frame t reads frames <= t alone: frames after t changed,
    the predictions up to t stay the same."""
    spec = _spec()
    keras.utils.set_random_seed(0)
    model = build_model(spec, TrainConfig(target="anomaly", conv_filters=(4, 8), lstm_units=8))
    head = model.get_layer(NEXT_FRAME_HEAD)
    head.set_weights([np.random.default_rng(0).normal(size=w.shape).astype("float32") for w in head.get_weights()])
    change = keras.Model(model.inputs, head.output)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (1, *spec.shape), dtype=np.uint8)
    later = frames.copy()
    later[:, 5:] = rng.integers(0, 256, later[:, 5:].shape, dtype=np.uint8)
    valid = np.array([8], np.int32)
    a = np.asarray(change({F.FRAMES: frames, F.VALID_FRAMES: valid}))
    b = np.asarray(change({F.FRAMES: later, F.VALID_FRAMES: valid}))
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-3
    # (score, prediction error) per series
    scores = np.asarray(model({F.FRAMES: frames, F.VALID_FRAMES: valid}))
    assert scores.shape == (1, 2) and scores[0, ANOMALY_SCORE] > 0


def test_the_abnormal_series_of_a_batch_carry_no_loss():
    """Trained on the normal series only: the other classes' series are read (they share
    batches) but their loss, and so their gradient, is zero."""
    spec = _spec()
    trainer = Trainer(spec, TrainConfig(target="anomaly", conv_filters=(4, 8), lstm_units=8),
                      tf.distribute.get_strategy(), np.ones(0), 10)
    frames = tf.constant(np.random.default_rng(2).integers(0, 256, (4, *spec.shape), dtype=np.uint8))
    inputs = {F.FRAMES: frames, F.VALID_FRAMES: tf.constant([8, 8, 6, 8], tf.int32)}
    outputs = trainer.model(inputs)
    losses = trainer._losses(tf.constant([0, 1, 0, 1], tf.int32), outputs).numpy()
    assert losses[1] == losses[3] == 0 and losses[0] > 0 and losses[2] > 0
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(trainer._losses(tf.constant([1, 1, 1, 1], tf.int32), trainer.model(inputs)))
    grads = tape.gradient(loss, trainer.model.trainable_variables)
    assert all(g is None or float(tf.reduce_max(tf.abs(g))) == 0.0 for g in grads)
