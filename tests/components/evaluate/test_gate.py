"""The gate's parts on hand-made predictions: which slices are gated, what a check
expects and finds, the intervals, and the temporal controls."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_model_analysis.proto import config_pb2

from medseq.components.evaluate import gate
from medseq.components.evaluate.eval_config import load_eval_config
from medseq.components.evaluate.inference import EvalPredictions, repeat_one_frame, shuffle_frames
from medseq.components.model import plots
from medseq.components.model.intervals import average_precision, binary_metrics, bootstrap_intervals
from medseq.components.model.metrics import binary_auc


def predictions(vendors: list[str], seed: int = 0) -> EvalPredictions:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, len(vendors))
    p1 = np.clip(labels * 0.6 + rng.uniform(0, 0.4, len(vendors)), 0, 1)
    return EvalPredictions(labels, {"modality": np.array(["MR"] * len(vendors), object),
                                    "manufacturer": np.array(vendors, object),
                                    "site": np.array(["s1"] * len(vendors), object)},
                           {"frames": np.stack([1 - p1, p1], -1)})


def test_thresholds_bind_to_the_overall_slice_and_to_slices_large_enough():
    preds = predictions(["GE"] * 30 + ["SIEMENS"] * 5)
    config = text_format.Parse("""
        slicing_specs {} slicing_specs { feature_keys: ["manufacturer"] }
        metrics_specs { metrics { class_name: "AUC" threshold { value_threshold { lower_bound { value: 0.5 } } } } }
    """, config_pb2.EvalConfig())
    gated, small = gate.gated_config(config, preds, min_slice_size=20)
    specs = [dict(s.feature_values) for t in gated.metrics_specs[0].metrics[0].per_slice_thresholds
             for s in t.slicing_specs]
    assert specs == [{}, {"manufacturer": "GE"}]
    assert not gated.metrics_specs[0].metrics[0].HasField("threshold")
    assert small == ["manufacturer=SIEMENS: 5 series < min_slice_size 20, reported, not gated"]


def test_a_value_check_on_the_interval_states_expected_found_and_interval():
    bound = config_pb2.GenericValueThreshold(lower_bound={"value": 0.85})
    check = gate._value_check("auc", "overall", bound, 0.9, (0.8, 0.97), on_interval=True, level=0.95)
    assert not check.passed  # the point clears 0.85, the lower end of its interval does not
    assert check.line() == ("auc on overall: expected >= 0.85 (the whole 95% interval), found 0.9000 "
                            "[95% CI 0.8000, 0.9700]: FAIL")
    assert gate._value_check("auc", "overall", bound, 0.9, (0.8, 0.97), on_interval=False, level=0.95).passed
    assert not gate._value_check("auc", "overall", bound, None, None, on_interval=True, level=0.95).passed


def test_interval_texts_state_the_configured_level():
    from medseq.components.evaluate.report import interval_head

    bound = config_pb2.GenericValueThreshold(lower_bound={"value": 0.85})
    line = gate._value_check("auc", "overall", bound, 0.9, (0.8, 0.97), on_interval=True, level=0.9).line()
    assert "(the whole 90% interval)" in line and "[90% CI 0.8000, 0.9700]" in line and "95" not in line
    assert interval_head({"confidence_level": 0.975}) == "97.5% interval"


def test_a_change_check_follows_tfmas_direction():
    change = config_pb2.GenericChangeThreshold(direction=config_pb2.MetricDirection.HIGHER_IS_BETTER,
                                               absolute={"value": -0.02})
    assert gate._change_check("auc_diff", "overall", change, -0.01, 0.9).passed
    assert not gate._change_check("auc_diff", "overall", change, -0.05, 0.9).passed


def test_bootstrap_intervals_hold_the_point_and_are_seeded():
    preds = predictions(["GE"] * 60, seed=1)
    probs, labels = preds.probs["frames"], preds.labels
    first = bootstrap_intervals(probs, labels, seed=3, samples=300)
    assert first == bootstrap_intervals(probs, labels, seed=3, samples=300)
    point = binary_metrics(probs, labels)
    for name in ("auc", "binary_accuracy", "precision", "recall", "specificity"):
        assert first[name][0] <= point[name] <= first[name][1], name


def test_average_precision_and_roc_points():
    scores, positive = np.array([0.9, 0.8, 0.7, 0.1]), np.array([True, False, True, False])
    assert average_precision(scores, positive) == pytest.approx((1 / 1 + 2 / 3) / 2)
    fpr, tpr = plots.roc_points(scores, positive)
    assert np.trapezoid(tpr, fpr) == pytest.approx(binary_auc(scores, positive))


def test_controls_move_only_valid_frames():
    frames = np.arange(2 * 6).reshape(2, 6, 1, 1, 1)
    valid = np.array([4, 6])
    shuffled = shuffle_frames(frames, valid, np.random.default_rng(0))
    assert sorted(shuffled[0, :4].ravel()) == [0, 1, 2, 3] and list(shuffled[0, 4:].ravel()) == [4, 5]
    assert sorted(shuffled[1].ravel()) == list(range(6, 12)) and not np.array_equal(shuffled, frames)
    one = repeat_one_frame(frames, valid)
    assert list(one[0].ravel()) == [2, 2, 2, 2, 4, 5] and list(one[1].ravel()) == [9] * 6


def test_shipped_configs_gate_auc_at_085_and_vendors_and_sites():
    for classes in (2, 3):
        config = load_eval_config(None, classes)
        bounds = [(t.threshold.value_threshold.lower_bound.value, [dict(s.feature_values) or list(s.feature_keys)
                   for s in t.slicing_specs]) for spec in config.metrics_specs for m in spec.metrics
                  for t in m.per_slice_thresholds]
        assert bounds == [(0.85, [[]]), (0.7, [["manufacturer"], ["site"]])], classes
