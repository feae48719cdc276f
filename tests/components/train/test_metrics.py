"""Training metrics against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medseq.components.model.metrics import auc, auc_from_histograms, binary_auc, class_weights, histograms
from medseq.pipeline.errors import ConfigError


def test_exact_auc_is_the_share_of_correctly_ordered_pairs_with_ties_halved():
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.3])
    positive = np.array([False, True, False, True, False])
    pairs = [(p, n) for p in scores[positive] for n in scores[~positive]]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert binary_auc(scores, positive) == pytest.approx(expected)
    assert np.isnan(binary_auc(scores, np.zeros(5, bool)))


def test_streamed_auc_matches_the_exact_one_for_two_and_three_classes():
    rng = np.random.default_rng(0)
    for classes in (2, 3):
        labels = rng.integers(0, classes, 500)
        logits = rng.normal(size=(500, classes)) + 1.5 * np.eye(classes)[labels]
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        hist = histograms(tf.constant(probs, tf.float32), tf.constant(labels, tf.int32)).numpy()
        assert hist.shape == (2, classes, 200) and hist.sum() == 500 * classes
        assert auc_from_histograms(hist) == pytest.approx(auc(probs, labels), abs=0.01)


def test_class_weights():
    classes = ("normal", "reduced_ef")
    np.testing.assert_allclose(class_weights("none", classes, {"normal": 30, "reduced_ef": 10}), [1, 1])
    np.testing.assert_allclose(class_weights("auto", classes, {"normal": 30, "reduced_ef": 10}), [40 / 60, 40 / 20])
    np.testing.assert_allclose(class_weights({"reduced_ef": 3.0}, classes, {}), [1.0, 3.0])
    with pytest.raises(ConfigError, match="unknown class\\(es\\) reduced; expected names among normal, reduced_ef"):
        class_weights({"reduced": 3.0}, classes, {})
    with pytest.raises(ConfigError, match="found none of reduced_ef"):
        class_weights("auto", classes, {"normal": 4})
