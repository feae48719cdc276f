"""Where in each frame (Grad-CAM, the `explain_frames` signature): two sanity checks in
the style of Adebayo et al. 2018 ("Sanity checks for saliency maps"), on the session's
trained CNN+LSTM (synthetic cine MR, eval AUC about 0.94) and on the same architecture
with its random initial weights.

- Model randomization: an explanation that does not change when the weights are
  randomized explains the input, not the model. The attributions of the two have a low
  rank correlation (Spearman, per held-out series).
- Localization: in cine_ef the answer (the ejection fraction) lives in the left
  ventricle's blood pool, the only structure the phantom draws at full signal (1.0,
  against at most 0.25 elsewhere, noise below 0.1), so in the windowed frames it is
  what lies above half the range in any frame of the series. Per held-out series, the
  share of the attribution inside it is at least twice the share of the frame it covers.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import spearmanr

from medseq.components.io.examples import parse_examples, record_spec, split_files
from medseq.pipeline import features as F

pytestmark = pytest.mark.slow


def _eval_series(records) -> tuple[np.ndarray, np.ndarray]:
    spec = record_spec(records)
    raw = tf.data.TFRecordDataset(split_files(records, "eval"), compression_type="GZIP").batch(1000)
    parsed = parse_examples(next(iter(raw)), spec)
    return parsed[F.FRAMES].numpy(), parsed[F.VALID_FRAMES].numpy().astype(np.int32)


def _attribution(model_dir: str, frames: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    explain = tf.saved_model.load(model_dir).signatures[F.EXPLAIN_SIGNATURE]
    out = explain(frames=tf.constant(frames), valid_frames=tf.constant(valid))
    serve = tf.saved_model.load(model_dir).signatures[F.FRAMES_SIGNATURE]
    same = serve(frames=tf.constant(frames), valid_frames=tf.constant(valid))[F.PROBABILITIES].numpy()
    np.testing.assert_allclose(out[F.PROBABILITIES].numpy(), same, atol=1e-6)  # the served model's answer
    return out[F.ATTRIBUTION].numpy(), out[F.CLASS_IDS].numpy()


@pytest.fixture(scope="module")
def explained(synthetic_records, good_model, random_model):
    frames, valid = _eval_series(synthetic_records)
    return frames, valid, _attribution(good_model, frames, valid)[0], _attribution(random_model, frames, valid)[0]


def test_attributions_are_maps_of_the_valid_frames_scaled_per_series(explained):
    frames, valid, trained, _ = explained
    assert trained.shape == frames.shape[:-1] and len(frames) >= 20
    for a, v in zip(trained, valid, strict=True):
        assert a.max() == pytest.approx(1.0) and a.min() >= 0.0
        assert not a[v:].any()  # padding explains nothing


def test_model_randomization_changes_the_attribution(explained):
    frames, valid, trained, random = explained
    rho = np.array([spearmanr(t[:v].ravel(), r[:v].ravel()).statistic
                    for t, r, v in zip(trained, random, valid, strict=True)])
    assert np.nanmedian(np.abs(rho)) < 0.3, f"rank correlation with a randomized model: median {np.nanmedian(rho)}"


def test_the_attribution_falls_on_the_blood_pool(explained):
    frames, valid, trained, _ = explained
    ratios = []
    for x, a, v in zip(frames, trained, valid, strict=True):
        pool = x[:v, :, :, 0].max(axis=0) > 127  # (H, W): the blood pool, at its largest (end-diastole)
        assert 0.01 < pool.mean() < 0.3  # a ventricle, not the frame and not nothing
        share = a[:v][:, pool].sum() / a[:v].sum()
        ratios.append(share / pool.mean())
    assert np.median(ratios) >= 2.0, f"attribution inside the pool / its area: median {np.median(ratios):.2f}"
