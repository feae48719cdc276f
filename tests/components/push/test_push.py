"""TF Serving push of a really trained and evaluated model; push refuses what is not blessed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import IN_PROCESS, auc_gate
from medseq.components import push
from medseq.components.evaluate import evaluate
from medseq.components.io.examples import load_spec, split_files
from medseq.components.push.model_card import CARD_FILE
from medseq.components.push.warmup import WARMUP_FILE, read_warmup, run_request
from medseq.pipeline import features as F
from medseq.pipeline.errors import InputError, StageFailed
from medseq.pipeline.fingerprints import tree_fingerprint


@pytest.fixture(scope="module")
def permissive(tmp_path_factory):
    return auc_gate(tmp_path_factory.mktemp("cfg") / "eval.pbtxt", 0.0, -1.0, ("manufacturer",))


@pytest.fixture(scope="module")
def blessed(tmp_path_factory, cine_records, trained, permissive):
    out = tmp_path_factory.mktemp("evaluate")
    return evaluate(str(cine_records), trained.model_dir, out, permissive, beam_args=IN_PROCESS)


def test_push_refuses_a_model_that_is_not_blessed(cine_records, trained, tmp_path):
    config = auc_gate(tmp_path / "strict.pbtxt", 1.01, -1.0, ("manufacturer",))
    result = evaluate(str(cine_records), trained.model_dir, tmp_path / "e", config, beam_args=IN_PROCESS)
    assert not result.blessed and (tmp_path / "e" / F.NOT_BLESSED).exists()
    with pytest.raises(StageFailed, match="NOT_BLESSED"):
        push.push(trained.model_dir, tmp_path / "e", tmp_path / "serving", "m")
    assert not push.executor.versions(tmp_path / "serving" / "m")


def test_gate_fails_closed_without_thresholds(cine_records, trained, tmp_path):
    config = auc_gate(tmp_path / "none.pbtxt", gated=False)
    result = evaluate(str(cine_records), trained.model_dir, tmp_path / "e", config, beam_args=IN_PROCESS)
    assert not result.blessed and "fails closed" in result.reasons[0]


def test_push_writes_atomic_integer_versions_with_a_model_card(blessed, trained, tmp_path):
    serving = tmp_path / "serving"
    first = push.push(trained.model_dir, blessed.out, serving, "medseq")
    second = push.push(trained.model_dir, blessed.out, serving, "medseq")
    assert (first.version, second.version) == (1, 2)
    assert sorted(p.name for p in (serving / "medseq").iterdir()) == ["1", "2"]  # no staging left
    assert push.served_model(serving, "medseq").name == "2"
    config = (serving / "models.config").read_text()
    assert 'name: "medseq"' in config and f'base_path: "{(serving / "medseq").resolve()}"' in config
    assert "model_version_policy { latest { num_versions: 1 } }" in config
    card = json.loads((serving / "medseq" / "2" / "assets.extra" / CARD_FILE).read_text())
    spec = load_spec(trained.model_dir)
    assert card["version"] == 2 and card["classes"] == list(spec.classes)
    assert card["network_data_format"]["inputs"]["frames"]["shape"] == list(spec.shape)
    assert card["preprocessing"]["frames"] == spec.frames
    # ingest.pixel_phi: the policy predict applies too, and what it decided over the training data
    assert card["pixel_phi"]["policy"] == {"burned_in_annotation": "reject", "secondary_capture": "reject",
                                           "ultrasound_regions": "crop"}
    assert card["pixel_phi"]["records"]["cropped_to_regions"] == 0 and "burned_in_annotation" in \
        card["pixel_phi"]["rejected"]
    assert F.EXPLAIN_SIGNATURE in card["network_data_format"]["signatures"]
    assert card["fingerprints"]["model"] == tree_fingerprint(trained.model_dir)
    assert card["fingerprints"]["training_records"]["files"] >= 1
    assert card["evaluation"]["decision"] == F.BLESSED and "auc" in card["evaluation"]["metrics"]
    assert card["evaluation"]["intervals"]["auc"][0] <= card["evaluation"]["metrics"]["auc"]
    assert card["package_versions"]["tensorflow"] == tf.__version__ and card["created"]


def test_warmup_is_synthetic_one_request_per_signature_and_batch_size(blessed, trained, tmp_path):
    version = Path(push.push(trained.model_dir, blessed.out, tmp_path / "s", "m", warmup_batch_sizes=(1, 8))
                   .version_dir)
    requests = read_warmup(version / "assets.extra" / WARMUP_FILE)
    shapes = [(r.model_spec.signature_name, tf.make_ndarray(next(iter(r.inputs.values()))).shape[0])
              for r in requests]
    assert shapes == [(F.SERVING_SIGNATURE, 1), (F.FRAMES_SIGNATURE, 1), (F.SERVING_SIGNATURE, 8),
                      (F.FRAMES_SIGNATURE, 8)]
    loaded = tf.saved_model.load(str(version))
    for request in requests:
        probs = run_request(loaded, request)[F.PROBABILITIES]
        assert np.allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_push_formats_ship_gated_artifacts_inside_the_version(blessed, trained, cine_records, tmp_path):
    from medseq.components.model import runtimes

    with pytest.raises(InputError, match="needs the records"):
        push.push(trained.model_dir, blessed.out, tmp_path / "s", "m", formats=("onnx:fp32",))
    assert not push.executor.versions(tmp_path / "s" / "m")  # refused before anything was staged
    out = push.push(trained.model_dir, blessed.out, tmp_path / "s", "m", formats=("litert:fp32", "onnx:fp32"),
                    examples=cine_records)
    version = Path(out.version_dir)
    card = json.loads((version / "assets.extra" / CARD_FILE).read_text())
    assert [(a["format"], a["precision"]) for a in card["artifacts"]] == [("litert", "fp32"), ("onnx", "fp32")]
    assert not out.refused and card["artifacts_refused"] == []
    served = tf.saved_model.load(str(version)).signatures[F.FRAMES_SIGNATURE]
    spec = load_spec(version)
    frames = np.random.default_rng(1).integers(0, 256, (2, *spec.shape), dtype=np.uint8)
    valid = np.array([spec.frames, 3], np.int32)
    want = served(frames=tf.constant(frames), valid_frames=tf.constant(valid))[F.PROBABILITIES].numpy()
    for entry in card["artifacts"]:
        path = version / entry["file"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["source_saved_model"] == card["fingerprints"]["model"] and entry["parity"]["passed"]
        assert np.abs(runtimes.load(path)(frames, valid) - want).max() < 1e-5  # the shipped file, run alone


def _record_secrets(records_dir: Path) -> list[bytes]:
    """What of a record must never ship: frame bytes (non-constant chunks) and the keys."""
    files = [f for split in F.SPLITS for f in split_files(records_dir, split)]
    found = []
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feature = tf.train.Example.FromString(raw.numpy()).features.feature
        frames = feature[F.FRAMES].bytes_list.value[0]
        found.append(frames)
        chunks = [frames[i:i + 256] for i in range(0, len(frames) - 256, len(frames) // 6)]
        found += [c for c in chunks if len(set(c)) > 8]
        found += [feature[k].bytes_list.value[0] for k in (F.SERIES_KEY, F.PATIENT_KEY, F.SITE)]
    return found


def test_no_byte_of_any_record_reaches_a_pushed_file(blessed, trained, cine_records, tmp_path):
    version = Path(push.push(trained.model_dir, blessed.out, tmp_path / "s", "m").version_dir)
    secrets = _record_secrets(cine_records)
    assert len(secrets) > 40
    for path in (p for p in version.rglob("*") if p.is_file()):
        content = path.read_bytes()
        leaked = [s[:8].hex() for s in secrets if s in content]
        assert not leaked, f"{path.relative_to(version)} holds record bytes"


def test_push_refuses_a_model_the_evaluation_did_not_bless(blessed, trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained.model_dir, other)
    (other / "variables" / "variables.data-00000-of-00001").write_bytes(b"tampered")
    with pytest.raises(StageFailed, match="fingerprint"):
        push.push(other, blessed.out, tmp_path / "s", "m")
    assert not (tmp_path / "s" / "m").exists() or not push.executor.versions(tmp_path / "s" / "m")
    code = subprocess.run([sys.executable, "-m", "medseq.pipeline.cli", "push", "--model", str(other),
                           "--evaluation", blessed.out, "--serving-dir", str(tmp_path / "s")],
                          capture_output=True, text=True)
    assert code.returncode != 0 and "fingerprint" in code.stderr and "Traceback" not in code.stderr


def test_retention_keeps_the_newest_versions_and_sweeps_killed_pushes(blessed, trained, tmp_path):
    base = tmp_path / "s" / "m"
    base.mkdir(parents=True)
    (base / ".incoming-999999999-deadbeef").mkdir()  # left by a push killed mid-copy
    removed = [push.push(trained.model_dir, blessed.out, tmp_path / "s", "m", keep_versions=3).removed
               for _ in range(5)]
    assert removed == [(), (), (), (1,), (2,)]
    assert sorted(p.name for p in base.iterdir()) == ["3", "4", "5"]


def test_a_reader_never_sees_a_version_without_its_complete_savedmodel(blessed, trained, tmp_path):
    serving = tmp_path / "s"
    base = serving / "m"
    push.push(trained.model_dir, blessed.out, serving, "m")
    needed = [Path(p).relative_to(trained.model_dir) for p in Path(trained.model_dir).rglob("*") if p.is_file()]
    needed += [Path("assets.extra") / CARD_FILE, Path("assets.extra") / WARMUP_FILE]
    incomplete: list[str] = []
    seen: set[str] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            for version in (p for p in base.iterdir() if p.name.isdigit()):
                seen.add(version.name)
                missing = [n for n in needed if not (version / n).exists()]
                if missing and version.exists():  # a version retired meanwhile is gone whole, not partial
                    incomplete.append(f"{version.name}: {missing[0]}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(2):
            push.push(trained.model_dir, blessed.out, serving, "m", keep_versions=1)
    finally:
        done.set()
        thread.join()
    assert not incomplete and {"1", "2", "3"} <= seen | {"1"}
    assert sorted(p.name for p in base.iterdir()) == ["3"]


@pytest.mark.slow
def test_a_fresh_process_serves_both_signatures_and_replays_the_warmup(blessed, trained, cine_records, tmp_path):
    version = Path(push.push(trained.model_dir, blessed.out, tmp_path / "s", "m").version_dir)
    record = next(iter(tf.data.TFRecordDataset(split_files(cine_records, "eval"), compression_type="GZIP")))
    (tmp_path / "record.bin").write_bytes(record.numpy())
    script = CONTRACT.replace("VERSION", str(version)).replace("RECORD", str(tmp_path / "record.bin"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "contract ok" in result.stdout
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--all", "--dir", str(version)], capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0 and "predict_frames" in shown.stdout and "serving_default" in shown.stdout


CONTRACT = """
import numpy as np, tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2
from medseq.components.push.warmup import WARMUP_FILE, read_warmup, run_request
from medseq.pipeline import features as F

loaded = tf.saved_model.load("VERSION")
record = open("RECORD", "rb").read()
by_examples = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="m", signature_name=F.SERVING_SIGNATURE))
by_examples.inputs["examples"].CopyFrom(tf.make_tensor_proto([record], dtype=tf.string))
feature = tf.train.Example.FromString(record).features.feature
shape = list(feature[F.FRAMES_SHAPE].int64_list.value)
frames = np.frombuffer(feature[F.FRAMES].bytes_list.value[0], feature[F.FRAMES_DTYPE].bytes_list.value[0].decode())
by_frames = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="m", signature_name=F.FRAMES_SIGNATURE))
by_frames.inputs[F.FRAMES].CopyFrom(tf.make_tensor_proto(frames.reshape([1] + shape)))
by_frames.inputs[F.VALID_FRAMES].CopyFrom(tf.make_tensor_proto(
    np.array(feature[F.VALID_FRAMES].int64_list.value, np.int32)))
a = run_request(loaded, by_examples)[F.PROBABILITIES]
b = run_request(loaded, by_frames)[F.PROBABILITIES]
assert a.shape == (1, 2) and np.abs(a - b).max() < 1e-6, (a, b)
for request in read_warmup("VERSION/assets.extra/" + WARMUP_FILE):
    run_request(loaded, request)
print("contract ok")
"""
