"""MultiWorkerMirroredStrategy across two local processes (a TF_CONFIG cluster on localhost)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from helpers import free_ports


@pytest.mark.slow
@pytest.mark.parametrize("target", ["class", "value", "frames"])
def test_two_workers_train_in_step(target, request, tmp_path):
    """Two workers of one TF_CONFIG cluster: the same steps, the same weights; for a class
    target on the committed cine samples, a value per series on the same (its head's bias
    from the train split's mean on both), and events per frame (a causal model, its loss
    over weighted frames) on synthetic cine_phase."""
    if target == "class":
        records, extra = request.getfixturevalue("cine_records"), ""
    elif target == "value":
        records = request.getfixturevalue("value_records")[0] / "records"
        extra = ", target: value, value: {column: ef, units: '%', range: [0, 100]}"
    else:
        records, extra = request.getfixturevalue("phase_records")[0] / "records", ", target: frames, causal: true"
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    config = tmp_path / "tiny.yaml"
    config.write_text(f"train: {{epochs: 1, batch_size: 4, conv_filters: [4], lstm_units: 4{extra}}}\n")
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "medseq.pipeline.cli", "train", "--examples", str(records), "--out",
             str(tmp_path / "train"), "--config", str(config), "--strategy", "multi_worker_mirrored"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    steps = [re.search(r"\((\d+) steps in all", out) for out in outputs]
    assert all(steps) and steps[0].group(1) == steps[1].group(1), outputs  # the same steps on both
    chief = tf.train.load_checkpoint(str(tmp_path / "train" / "checkpoints"))
    other = tf.train.load_checkpoint(str(tmp_path / "train" / "checkpoints.worker-worker-1"))
    names = [n for n, _ in tf.train.list_variables(str(tmp_path / "train" / "checkpoints"))
             if "_trainable_variables" in n]  # the model weights, as the optimizer tracks them
    assert names
    for name in names:  # the same weights on both workers: they trained in step
        np.testing.assert_allclose(chief.get_tensor(name), other.get_tensor(name), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "train" / "model" / "saved_model.pb").exists()
