"""Real training on tiny shapes: loop, checkpoints that survive a kill, export round trip."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from medseq.components import train
from medseq.components.train.dataset import make_dataset, record_spec, split_files
from medseq.components.train.executor import Trainer, make_strategy
from medseq.components.train.export import export_saved_model, load_spec
from medseq.pipeline import features as F
from medseq.pipeline.config import TrainConfig

TINY = TrainConfig(epochs=1, batch_size=4, conv_filters=(4,), lstm_units=4)


def test_training_writes_checkpoints_logs_and_a_model(trained):
    assert trained.epochs_run == 2 and len(trained.history) == 2
    assert all(np.isfinite(h["loss"]) for h in trained.history)
    out = os.path.dirname(trained.model_dir)
    assert tf.train.latest_checkpoint(os.path.join(out, "checkpoints")).endswith("ckpt-2")
    assert any("tfevents" in name for _, _, names in os.walk(os.path.join(out, "logs")) for name in names)
    loaded = tf.saved_model.load(trained.model_dir)
    assert set(loaded.signatures) == {F.SERVING_SIGNATURE, F.FRAMES_SIGNATURE}
    assert load_spec(trained.model_dir).classes == ("normal", "reduced_ef")


def test_resume_runs_only_the_missing_epochs(cine_records, tmp_path):
    first = train.run(cine_records, tmp_path, TINY)
    assert (first.epochs_run, first.resumed_from_epoch) == (1, 0)
    second = train.run(cine_records, tmp_path, dataclasses.replace(TINY, epochs=2))
    assert (second.epochs_run, second.resumed_from_epoch) == (1, 1)


@pytest.mark.slow
def test_a_killed_training_resumes_from_its_last_checkpoint(cine_records, tmp_path, config):
    out = tmp_path / "train"
    proc = subprocess.Popen([sys.executable, "-m", "medseq.pipeline.cli", "train", "--examples", str(cine_records),
                             "--out", str(out), "--epochs", "200"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "checkpoints" / "ckpt-2.index").exists():
            time.sleep(0.5)
        assert (out / "checkpoints" / "ckpt-2.index").exists(), "no checkpoint within the time limit"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = int(tf.train.latest_checkpoint(str(out / "checkpoints")).rsplit("-", 1)[1])
    resumed = train.run(cine_records, out, dataclasses.replace(config.train, epochs=done + 1))
    assert resumed.resumed_from_epoch == done and resumed.epochs_run == 1


def test_exported_signatures_match_the_in_memory_model(cine_records, tmp_path):
    spec = record_spec(cine_records)
    trainer = Trainer(spec, TINY, make_strategy(TINY))
    path = export_saved_model(trainer.model, spec, tmp_path / "model")
    loaded = tf.saved_model.load(str(path))
    serialized = next(iter(tf.data.TFRecordDataset(split_files(cine_records, "eval"), compression_type="GZIP")
                           .batch(4)))
    (inputs, _), = make_dataset(split_files(cine_records, "eval"), spec, 4, shuffle=False, seed=0).take(1)
    expected = trainer.model(inputs, training=False).numpy()
    by_examples = loaded.signatures[F.SERVING_SIGNATURE](examples=serialized)
    by_frames = loaded.signatures[F.FRAMES_SIGNATURE](frames=inputs[F.FRAMES], valid_frames=inputs[F.VALID_FRAMES])
    np.testing.assert_allclose(by_examples[F.PROBABILITIES].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_frames[F.PROBABILITIES].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_examples["probability"].numpy(), expected[:, 1], rtol=1e-5, atol=1e-6)


def test_padding_is_masked(cine_records):
    spec = record_spec(cine_records)
    trainer = Trainer(spec, TINY, make_strategy(TINY))
    frames = np.random.default_rng(0).integers(0, 255, (1, *spec.shape), dtype=np.uint8)
    noisy = frames.copy()
    noisy[:, 8:] = 255 - noisy[:, 8:]  # changes only frames beyond valid_frames
    valid = np.array([8], np.int32)
    a = trainer.model({F.FRAMES: frames, F.VALID_FRAMES: valid}, training=False).numpy()
    b = trainer.model({F.FRAMES: noisy, F.VALID_FRAMES: valid}, training=False).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_mirrored_strategy_trains(cine_records, tmp_path):
    result = train.run(cine_records, tmp_path, dataclasses.replace(TINY, strategy="mirrored"))
    assert result.epochs_run == 1 and np.isfinite(result.history[0]["loss"])
