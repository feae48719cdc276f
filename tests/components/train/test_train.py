"""Real training on tiny shapes: the loop, the best epoch, checkpoints that survive a kill,
the same weights whatever the hash key, and the export round trip."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from helpers import IN_PROCESS, convert
from medseq.components import train
from medseq.components.io.examples import eval_dataset, load_spec, record_spec, split_files
from medseq.components.model.saved_model import export_saved_model
from medseq.components.train.executor import Trainer, make_strategy
from medseq.components.train.progress import HISTORY_FILE
from medseq.pipeline import features as F
from medseq.pipeline.config import TrainConfig

TINY = TrainConfig(epochs=1, batch_size=4, conv_filters=(4,), lstm_units=4)
CURVES = ("loss", "accuracy", "auc", "learning_rate", "eval_loss", "eval_accuracy", "eval_auc")


def checkpoint_values(directory: Path) -> dict[str, np.ndarray]:
    """Every variable of the newest checkpoint in `directory` (model, optimizer, loop state)."""
    reader = tf.train.load_checkpoint(str(directory))
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(str(directory))
            if name not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


def assert_same_values(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys() and any("_trainable_variables" in n for n in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def scalars(logdir: Path) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for path in logdir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return found


def test_training_keeps_history_curves_and_exports_the_best_epoch(trained):
    out = Path(trained.model_dir).parent
    history = json.loads((out / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and history == trained.history
    for entry in history:
        assert set(CURVES) <= set(entry) and all(np.isfinite(entry[k]) for k in CURVES if k != "eval_auc")
    best = max(history, key=lambda h: h["eval_auc"])  # the first of equal values, as the loop keeps it
    assert trained.best_epoch == best["epoch"]
    assert (out / "checkpoints" / "best" / f"ckpt-{trained.best_epoch}.index").exists()
    # TensorBoard: the same curve names for train and eval, one point per epoch.
    for split in ("train", "eval"):
        curves = scalars(out / "logs" / split)
        for name in ("loss", "accuracy", "auc"):
            assert len(curves[name]) == 3, (split, name)
    assert scalars(out / "logs" / "train")["learning_rate"][0] == pytest.approx(history[0]["learning_rate"])
    loaded = tf.saved_model.load(trained.model_dir)
    assert set(loaded.signatures) == {F.SERVING_SIGNATURE, F.FRAMES_SIGNATURE, F.EXPLAIN_SIGNATURE}
    assert load_spec(trained.model_dir).classes == ("normal", "reduced_ef")


def test_the_exported_model_scores_the_eval_split_as_its_best_epoch_did(trained, cine_records):
    spec = record_spec(cine_records)
    signature = tf.saved_model.load(trained.model_dir).signatures[F.FRAMES_SIGNATURE]
    probs, labels = [], []
    for inputs, y in eval_dataset(split_files(cine_records, "eval"), spec, 8):
        probs.append(signature(**inputs)[F.PROBABILITIES].numpy())
        labels.append(y.numpy())
    p, y = np.concatenate(probs), np.concatenate(labels)
    best = trained.history[trained.best_epoch - 1]
    assert np.mean(p.argmax(-1) == y) == pytest.approx(best["eval_accuracy"])


def test_resume_runs_only_the_missing_epochs(cine_records, tmp_path):
    first = train.train(cine_records, tmp_path, TINY)
    assert (first.epochs_run, first.resumed_from_epoch) == (1, 0)
    second = train.train(cine_records, tmp_path, dataclasses.replace(TINY, epochs=2))
    assert (second.epochs_run, second.resumed_from_epoch, second.resumed_from_step) == (1, 1, first.steps)
    assert second.steps == 2 * first.steps
    assert len(json.loads((tmp_path / HISTORY_FILE).read_text())) == 2


def test_early_stopping_keeps_the_best_epoch(cine_records, tmp_path):
    # A learning rate this small changes nothing a metric can see: no epoch beats the first.
    config = dataclasses.replace(TINY, epochs=6, patience=2, learning_rate=1e-12, dropout=0.0)
    result = train.train(cine_records, tmp_path, config)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    again = train.train(cine_records, tmp_path, config)  # the same command does not train on
    assert again.epochs_run == 0 and again.stopped_early


def _train_command(examples: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "medseq.pipeline.cli", "train", "--examples", str(examples), "--out", str(out),
            "--config", str(config)]


@pytest.mark.slow
def test_a_job_killed_mid_epoch_ends_with_the_weights_of_one_never_killed(cine_records, tmp_path):
    settings = {"epochs": 3, "batch_size": 1, "conv_filters": [4], "lstm_units": 4, "dropout": 0.2,
                "augment": ["flip", "rot90", "roll"], "checkpoint_every_steps": 1, "seed": 3}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"train": settings}))
    steps_per_epoch = json.loads((cine_records / F.QC_FILE).read_text())["records"]["train"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(cine_records, killed, config), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (killed / "checkpoints" / f"ckpt-{steps_per_epoch + 3}.index").exists():
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The newest checkpoint the manager recorded (a kill mid-save leaves an index file it never recorded).
    latest = tf.train.latest_checkpoint(str(killed / "checkpoints"))
    step = int(latest.rsplit("-", 1)[1]) if latest else 0
    assert steps_per_epoch <= step < 3 * steps_per_epoch, "killed outside the second epoch"
    resumed = subprocess.run(_train_command(cine_records, killed, config), capture_output=True, text=True, check=True)
    assert f"resuming at step {step}" in resumed.stdout
    clean = tmp_path / "clean"
    subprocess.run(_train_command(cine_records, clean, config), capture_output=True, text=True, check=True)
    assert_same_values(checkpoint_values(clean / "checkpoints"), checkpoint_values(killed / "checkpoints"))
    assert json.loads((clean / HISTORY_FILE).read_text()) == json.loads((killed / HISTORY_FILE).read_text())


@pytest.mark.slow
def test_the_same_data_under_two_hash_keys_trains_the_same_weights(config, tmp_path):
    runs = []
    for name, key in (("a", b"first-key-0123456789abcdef"), ("b", b"another-secret-key-9876543210")):
        records = tmp_path / f"records-{name}"
        convert(config, records, key=key, beam_args=IN_PROCESS)
        result = train.train(records, tmp_path / f"train-{name}",
                             dataclasses.replace(TINY, epochs=2, augment=("flip",)))
        runs.append((records, result))
    (a, first), (b, second) = runs
    keys = [[tf.train.Example.FromString(r.numpy()).features.feature[F.SERIES_KEY].bytes_list.value[0]
             for r in tf.data.TFRecordDataset(split_files(rec, "train"), compression_type="GZIP")] for rec in (a, b)]
    assert set(keys[0]).isdisjoint(keys[1])  # the keyed hashes differ ...
    assert first.history == second.history  # ... the training does not
    assert_same_values(checkpoint_values(Path(first.model_dir).parent / "checkpoints"),
                       checkpoint_values(Path(second.model_dir).parent / "checkpoints"))


def test_exported_signatures_match_the_in_memory_model(cine_records, tmp_path):
    spec = record_spec(cine_records)
    trainer = Trainer(spec, TINY, make_strategy(TINY), np.ones(2, np.float32), 1)
    path = export_saved_model(trainer.model, spec, tmp_path / "model")
    loaded = tf.saved_model.load(str(path))
    serialized = next(iter(tf.data.TFRecordDataset(split_files(cine_records, "eval"), compression_type="GZIP")
                           .batch(4)))
    inputs, _ = next(iter(eval_dataset(split_files(cine_records, "eval"), spec, 4)))
    expected = trainer.model(inputs, training=False).numpy()
    by_examples = loaded.signatures[F.SERVING_SIGNATURE](examples=serialized)
    by_frames = loaded.signatures[F.FRAMES_SIGNATURE](frames=inputs[F.FRAMES], valid_frames=inputs[F.VALID_FRAMES])
    np.testing.assert_allclose(by_examples[F.PROBABILITIES].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_frames[F.PROBABILITIES].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_examples["probability"].numpy(), expected[:, 1], rtol=1e-5, atol=1e-6)


def test_ema_evaluates_the_moving_average_and_gives_the_trained_weights_back(cine_records):
    """train.ema: inside `moving_average()` the model holds the exponential moving average of its
    weights over the steps (the first step's weights start it, as Keras' EMA does); after
    it, the trained weights go on training unchanged."""
    spec = record_spec(cine_records)
    config = dataclasses.replace(TINY, ema=0.5, dropout=0.0)
    trainer = Trainer(spec, config, make_strategy(config), np.ones(2, np.float32), 4)
    batches = iter(eval_dataset(split_files(cine_records, "train"), spec, 4).repeat())
    weights = lambda: [v.numpy() for v in trainer.model.trainable_variables]
    average: list[np.ndarray] = []
    for step in range(3):
        trainer.train_step(batches)
        momentum = 0.0 if step == 0 else config.ema
        average = [w if step == 0 else momentum * a + (1 - momentum) * w
                   for a, w in zip(average or weights(), weights(), strict=True)]
    trained = weights()
    with trainer.moving_average():
        inside = weights()
    for got, want, last, back in zip(inside, average, trained, weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(back, last)
    assert any(not np.allclose(got, last) for got, last in zip(inside, trained, strict=True))


def test_tta_answers_the_same_for_a_turned_or_mirrored_series(cine_records, tmp_path):
    """train.tta: the served answer is the mean over the eight symmetries of the square
    (augment flip and rot90), so turning or mirroring every frame of a series does not
    change it; the same model without it does change its answer."""
    spec = record_spec(cine_records)
    config = dataclasses.replace(TINY, augment=("flip", "rot90"), tta=True)
    trainer = Trainer(spec, config, make_strategy(config), np.ones(2, np.float32), 1)
    assert trainer.tta is not None and len(trainer.tta) == 8
    served = {name: tf.saved_model.load(str(export_saved_model(trainer.model, spec, tmp_path / name, tta=table)))
              .signatures[F.FRAMES_SIGNATURE] for name, table in (("tta", trainer.tta), ("plain", None))}
    inputs, _ = next(iter(eval_dataset(split_files(cine_records, "eval"), spec, 4)))
    frames, valid = inputs[F.FRAMES].numpy(), inputs[F.VALID_FRAMES]
    turned = np.ascontiguousarray(np.rot90(frames, 1, axes=(2, 3))[:, :, :, ::-1])  # a quarter turn, mirrored
    answer = {name: [signature(frames=tf.constant(x), valid_frames=valid)[F.PROBABILITIES].numpy()
                     for x in (frames, turned)] for name, signature in served.items()}
    np.testing.assert_allclose(answer["tta"][0], answer["tta"][1], atol=1e-5)
    assert np.abs(answer["plain"][0] - answer["plain"][1]).max() > 1e-4
    np.testing.assert_allclose(answer["tta"][0], trainer._predict(inputs).numpy(), atol=1e-5)  # eval answers alike


def test_padding_is_masked(cine_records):
    spec = record_spec(cine_records)
    trainer = Trainer(spec, TINY, make_strategy(TINY), np.ones(2, np.float32), 1)
    frames = np.random.default_rng(0).integers(0, 255, (1, *spec.shape), dtype=np.uint8)
    noisy = frames.copy()
    noisy[:, 8:] = 255 - noisy[:, 8:]  # changes only frames beyond valid_frames
    valid = np.array([8], np.int32)
    a = trainer.model({F.FRAMES: frames, F.VALID_FRAMES: valid}, training=False).numpy()
    b = trainer.model({F.FRAMES: noisy, F.VALID_FRAMES: valid}, training=False).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_mirrored_strategy_runs_the_same_steps(cine_records, tmp_path):
    default = train.train(cine_records, tmp_path / "default", TINY)
    mirrored = train.train(cine_records, tmp_path / "mirrored", dataclasses.replace(TINY, strategy="mirrored"))
    assert mirrored.steps == default.steps and np.isfinite(mirrored.history[0]["loss"])


def test_class_weights_change_the_loss(cine_records, tmp_path):
    plain = train.train(cine_records, tmp_path / "plain", dataclasses.replace(TINY, dropout=0.0))
    counts = json.loads((cine_records / F.QC_FILE).read_text())["labels"]["train"]
    heavier = max(counts, key=lambda c: counts[c])  # weighting the majority class up raises the loss
    weighted = train.train(cine_records, tmp_path / "weighted",
                         dataclasses.replace(TINY, dropout=0.0, class_weight={heavier: 3.0}))
    assert weighted.history[0]["loss"] > plain.history[0]["loss"]
    assert weighted.history[0]["eval_loss"] != plain.history[0]["eval_loss"]


@pytest.mark.slow
def test_three_classes_train_export_evaluate_and_predict(tmp_path, key):
    from medseq.components import evaluate, predict, synth
    from medseq.pipeline.config import load_config

    synth.run("cine_ef3", patients=24, seed=5, out=tmp_path / "data", small=True)
    config = load_config().on_input(str(tmp_path / "data" / "dicom"), str(tmp_path / "data" / "labels.csv"))
    convert(config, tmp_path / "records", key=key, beam_args=IN_PROCESS)
    trained = train.train(tmp_path / "records", tmp_path / "train", dataclasses.replace(TINY, epochs=2))
    assert load_spec(trained.model_dir).classes == ("mildly_reduced_ef", "normal", "reduced_ef")
    assert 0.0 <= trained.history[-1]["eval_auc"] <= 1.0  # macro one-vs-rest
    result = evaluate.evaluate(str(tmp_path / "records"), trained.model_dir, tmp_path / "evaluate",
                               beam_args=IN_PROCESS)
    assert {"macro_auc", "auc_class_0", "auc_class_1", "auc_class_2"} <= set(result.metrics)
    assert result.blessed == all(c.passed for c in result.checks) and result.checks[0].metric == "macro_auc"
    page = (tmp_path / "evaluate" / "report.html").read_text()
    assert "mildly_reduced_ef vs rest" not in page or "auc_class_2" in page
    assert all(f"auc_class_{k}" in page for k in range(3))
    series = sorted((tmp_path / "data" / "dicom").rglob("SE000003"))[0]  # a cine series (SE000001: localizer)
    predictions = predict.predict(trained.model_dir, series)
    assert [len(p.probabilities) for p in predictions] == [3]
    assert sum(predictions[0].probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_the_progress_is_a_bar_on_a_terminal_and_a_line_in_a_log(capsys):
    from medseq.components.train.progress import EpochProgress

    line = EpochProgress(2, 5, steps=3, interactive=False)
    line.step(1, 0.5)
    line.end({"epoch": 2, "loss": 0.25, "eval_auc": 0.75}, "best eval_auc so far")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("train: epoch 2/5 loss=0.2500 eval_auc=0.7500")
    bar = EpochProgress(2, 5, steps=3, interactive=True)
    for done in (1, 2, 3):
        bar.step(done, 0.5)
    bar.end({"epoch": 2, "loss": 0.25})
    shown = capsys.readouterr().out
    assert "Epoch 2/5" in shown and "3/3" in shown and "loss: 0.2500" in shown


def test_history_of_a_resumed_job_is_cut_back_to_its_checkpoint(tmp_path):
    from medseq.components.train.progress import History

    (tmp_path / HISTORY_FILE).write_text(json.dumps([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]))
    history = History(tmp_path, tmp_path / "logs", write=True, epochs_done=1)
    history.add({"epoch": 2, "loss": 0.4})
    assert [h["loss"] for h in json.loads((tmp_path / HISTORY_FILE).read_text())] == [1.0, 0.4]
    assert sorted(os.listdir(tmp_path / "logs")) == ["eval", "train"]
