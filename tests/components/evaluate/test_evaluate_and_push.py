"""TFMA gate and TF Serving push on a really trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_serving.apis import prediction_log_pb2

from medseq.components import push
from medseq.components.evaluate import evaluate
from medseq.pipeline import features as F
from medseq.pipeline.errors import StageFailed

PERMISSIVE = """
model_specs { signature_name: "serving_default" label_key: "label" prediction_key: "probability" }
slicing_specs {}
slicing_specs { feature_keys: ["manufacturer"] }
metrics_specs {
  metrics { class_name: "ExampleCount" }
  metrics { class_name: "AUC"
    threshold { value_threshold { lower_bound { value: 0.0 } }
                change_threshold { direction: HIGHER_IS_BETTER absolute { value: -1.0 } } } }
}
"""


@pytest.fixture(scope="module")
def permissive(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "eval.pbtxt"
    path.write_text(PERMISSIVE)
    return str(path)


@pytest.fixture(scope="module")
def blessed(tmp_path_factory, cine_records, trained, permissive):
    out = tmp_path_factory.mktemp("evaluate")
    return evaluate(str(cine_records), trained.model_dir, out, permissive)


def test_permissive_gate_blesses_and_tfma_output_loads(blessed):
    assert blessed.blessed and (json.loads(open(f"{blessed.out}/{F.BLESSED}").read())["blessed"])
    assert blessed.metrics["example_count"] == 8 and 0 <= blessed.metrics["auc"] <= 1
    result = tfma.load_eval_result(f"{blessed.out}/metrics")
    slices = {key for key, _ in result.slicing_metrics}
    assert () in slices and any(key and key[0][0] == "manufacturer" for key in slices)


def test_unmet_threshold_is_not_blessed_and_is_not_pushed(cine_records, trained, tmp_path):
    config = tmp_path / "strict.pbtxt"
    config.write_text(PERMISSIVE.replace("lower_bound { value: 0.0 }", "lower_bound { value: 1.01 }"))
    result = evaluate(str(cine_records), trained.model_dir, tmp_path / "e", str(config))
    assert not result.blessed and any(r.startswith("auc on overall: expected >= 1.01") for r in result.reasons)
    assert (tmp_path / "e" / F.NOT_BLESSED).exists() and not (tmp_path / "e" / F.BLESSED).exists()
    with pytest.raises(StageFailed, match="NOT_BLESSED"):
        push.push(trained.model_dir, tmp_path / "e", tmp_path / "serving", "m")
    assert not (tmp_path / "serving" / "m").exists() or not push.executor.versions(tmp_path / "serving" / "m")


def test_gate_fails_closed_without_thresholds(cine_records, trained, tmp_path):
    config = tmp_path / "none.pbtxt"
    config.write_text(PERMISSIVE.split("metrics_specs")[0] + 'metrics_specs { metrics { class_name: "AUC" } }')
    result = evaluate(str(cine_records), trained.model_dir, tmp_path / "e", str(config))
    assert not result.blessed and "fails closed" in result.reasons[0]


def test_baseline_comparison_reports_differences(cine_records, trained, permissive, tmp_path):
    result = evaluate(str(cine_records), trained.model_dir, tmp_path / "e", permissive, baseline_dir=trained.model_dir)
    assert result.blessed and result.metrics["auc_diff"] == pytest.approx(0.0)


def test_push_writes_atomic_integer_versions_with_warmup(blessed, trained, cine_records, tmp_path):
    serving = tmp_path / "serving"
    first = push.push(trained.model_dir, blessed.out, serving, "medseq", examples_dir=str(cine_records))
    second = push.push(trained.model_dir, blessed.out, serving, "medseq", examples_dir=str(cine_records))
    assert (first.version, second.version) == (1, 2)
    assert sorted(p.name for p in (serving / "medseq").iterdir()) == ["1", "2"]  # no staging left
    assert push.served_model(serving, "medseq").name == "2"
    config = (serving / "models.config").read_text()
    assert 'name: "medseq"' in config and f'base_path: "{(serving / "medseq").resolve()}"' in config
    warmup = serving / "medseq" / "2" / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(warmup))]
    request = logs[0].predict_log.request
    assert request.model_spec.signature_name == F.SERVING_SIGNATURE
    served = tf.saved_model.load(str(serving / "medseq" / "2"))
    examples = tf.make_ndarray(request.inputs["examples"])
    probs = served.signatures[F.SERVING_SIGNATURE](examples=tf.constant(examples))[F.PROBABILITIES].numpy()
    assert probs.shape == (len(examples), 2) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
