"""Push a blessed SavedModel into a TF Serving model base path.

`<serving_dir>/<model_name>/<version>/` appears atomically: the copy is assembled
under a hidden name in the same folder (warm-up requests included) and renamed into
place, so TF Serving's file-system poller never sees half a version.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from medseq.components.train.dataset import split_files
from medseq.pipeline import features as F
from medseq.pipeline.errors import InputError, StageFailed

WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_RECORDS = 4


@dataclass(frozen=True)
class PushOutputs:
    version_dir: str
    version: int
    models_config: str


def versions(model_base: Path) -> list[int]:
    if not model_base.is_dir():
        return []
    return sorted(int(p.name) for p in model_base.iterdir() if p.is_dir() and p.name.isdigit())


def served_model(serving_dir: str | Path, model_name: str) -> Path | None:
    """The newest version TF Serving would load now, if any (the evaluation baseline)."""
    base = Path(serving_dir) / model_name
    found = versions(base)
    return base / str(found[-1]) if found else None


def write_warmup(path: Path, model_name: str, examples: list[bytes]) -> None:
    """assets.extra/tf_serving_warmup_requests: PredictionLogs TF Serving replays at load."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=model_name, signature_name=F.SERVING_SIGNATURE))
        request.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())


def write_models_config(serving_dir: Path, model_name: str) -> Path:
    """models.config for `tensorflow_model_server --model_config_file=...` (text proto)."""
    path = serving_dir / "models.config"
    base = (serving_dir / model_name).resolve()
    text = ("model_config_list {\n  config {\n"
            f"    name: \"{model_name}\"\n    base_path: \"{base}\"\n    model_platform: \"tensorflow\"\n"
            "  }\n}\n")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _examples(examples_dir: str | None) -> list[bytes]:
    if not examples_dir:
        return []
    files = split_files(examples_dir, "eval") or split_files(examples_dir, "train")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(WARMUP_RECORDS)
    return [r.numpy() for r in ds]


def push(model_dir: str | Path, evaluation_dir: str | Path, serving_dir: str | Path, model_name: str,
         examples_dir: str | None = None) -> PushOutputs:
    """Copies `model_dir` to the next integer version, only if `evaluation_dir` says BLESSED."""
    evaluation_dir, serving_dir, model_dir = Path(evaluation_dir), Path(serving_dir), Path(model_dir)
    if not (evaluation_dir / F.BLESSED).exists():
        why = ""
        if (evaluation_dir / F.NOT_BLESSED).exists():
            why = "; ".join(json.loads((evaluation_dir / F.NOT_BLESSED).read_text()).get("reasons", []))
            raise StageFailed(f"not pushed: the model is NOT_BLESSED ({why})")
        raise StageFailed(f"not pushed: {evaluation_dir} holds no {F.BLESSED} file; run `medseq evaluate` first")
    if not (model_dir / "saved_model.pb").exists():
        raise InputError(f"{model_dir}: expected a SavedModel (saved_model.pb), found none")
    base = serving_dir / model_name
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".incoming-{uuid.uuid4().hex[:8]}"
    shutil.copytree(model_dir, staging)
    examples = _examples(examples_dir)
    if examples:
        write_warmup(staging / "assets.extra" / WARMUP_FILE, model_name, examples)
    while True:
        version = (versions(base) or [0])[-1] + 1
        target = base / str(version)
        try:
            os.rename(staging, target)  # atomic; fails if another push took this number
            break
        except OSError:
            if not target.exists():
                shutil.rmtree(staging, ignore_errors=True)
                raise
    config = write_models_config(serving_dir, model_name)
    return PushOutputs(str(target), version, str(config))
