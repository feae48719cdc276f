"""The model options: per-sequence standardization, frame differences, LSTM stacks,
keras.applications encoders with local weights, mixed precision and XLA."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from medseq.components.io.examples import RecordSpec
from medseq.components.model.network import build_model
from medseq.components.train import train
from medseq.pipeline import features as F
from medseq.pipeline.config import TrainConfig
from medseq.pipeline.errors import ConfigError

SPEC = RecordSpec(4, 32, 32, 1, "uint8", ("a", "b", "c"))
TINY = TrainConfig(epochs=1, batch_size=2, conv_filters=(4,), lstm_units=4)


def inputs(batch: int = 2, valid: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    frames = np.random.default_rng(seed).integers(0, 255, (batch, *SPEC.shape), dtype=np.uint8)
    return {F.FRAMES: frames, F.VALID_FRAMES: np.full(batch, valid, np.int32)}


def test_a_prediction_does_not_depend_on_the_rest_of_the_batch():
    model = build_model(SPEC, TINY)
    alone = model(inputs(1), training=False).numpy()
    together = inputs(3)
    together[F.FRAMES][0] = inputs(1)[F.FRAMES][0]
    np.testing.assert_allclose(model(together, training=False).numpy()[:1], alone, rtol=1e-5, atol=1e-6)


def test_lstm_stacks_and_bidirectional_layers_keep_the_cudnn_path():
    model = build_model(SPEC, dataclasses.replace(TINY, lstm_layers=2, bidirectional=True))
    lstms = [layer.forward_layer for layer in model.layers if isinstance(layer, keras.layers.Bidirectional)]
    assert len(lstms) == 2
    for lstm in lstms:  # what Keras' TF backend requires of an LSTM to run it on cuDNN
        assert lstm.recurrent_dropout == 0 and not lstm.unroll and lstm.cell.use_bias
        assert lstm.cell.activation is keras.activations.tanh
        assert lstm.cell.recurrent_activation is keras.activations.sigmoid
    assert model(inputs(), training=False).shape == (2, 3)


def test_the_lstm_sees_a_change_between_frames_whatever_its_scale():
    from medseq.components.model.network import SequenceStandardization

    features = np.array([[[1.0], [2.0], [3.0], [0.0]], [[10.0], [20.0], [30.0], [0.0]]], np.float32)
    mask = np.array([[True, True, True, False]] * 2)
    z, context = SequenceStandardization()(features, mask)
    np.testing.assert_allclose(z.numpy()[0], z.numpy()[1], atol=1e-5)  # the same shape of change
    np.testing.assert_allclose(z.numpy()[0, :3, 0], [-1.2247, 0.0, 1.2247], atol=1e-3)
    assert z.numpy()[0, 3, 0] == 0.0  # padding
    assert context.numpy()[1, 0, 0] == pytest.approx(20.0) and context.numpy()[0, 0, 0] == pytest.approx(2.0)


@pytest.mark.parametrize("encoder", ["mobilenet_v3_small", "efficientnet_b0"])
def test_keras_application_encoders_build_without_weights_and_load_a_local_file(encoder, tmp_path):
    config = dataclasses.replace(TINY, encoder=encoder)
    model = build_model(SPEC, config)
    assert model(inputs(), training=False).shape == (2, 3)
    net = model.get_layer("per_frame_cnn").layer.layers[-1]
    for w in net.weights:
        w.assign(np.full(w.shape, 0.01, w.dtype))
    weights = tmp_path / f"{encoder}.weights.h5"
    net.save_weights(weights)
    loaded = build_model(SPEC, dataclasses.replace(config, encoder_weights=str(weights)))
    first = loaded.get_layer("per_frame_cnn").layer.layers[-1].weights[0].numpy()
    np.testing.assert_allclose(first, 0.01)


def test_a_missing_weights_file_is_one_line():
    with pytest.raises(ConfigError, match="expected a local weights file for mobilenet_v3_small, found no file at"):
        build_model(SPEC, dataclasses.replace(TINY, encoder="mobilenet_v3_small", encoder_weights="/nowhere.h5"))


def test_mixed_bfloat16_with_xla_trains_and_keeps_float32_probabilities(cine_records, tmp_path):
    config = dataclasses.replace(TINY, mixed_precision="mixed_bfloat16", jit_compile=True, deterministic=False,
                                 batch_size=4)
    result = train(cine_records, tmp_path, config)
    assert np.isfinite(result.history[0]["loss"])
    model = build_model(SPEC, config)
    assert model.get_layer("per_frame_cnn").layer.layers[1].compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"


def test_xla_and_determinism_exclude_each_other_at_load():
    with pytest.raises(ConfigError, match="expected deterministic: false beside jit_compile: true"):
        dataclasses.replace(TINY, jit_compile=True)


def test_mixed_float16_scales_the_loss(cine_records, tmp_path):
    from medseq.components.train.loop import make_optimizer

    assert isinstance(make_optimizer(dataclasses.replace(TINY, mixed_precision="mixed_float16"), 10),
                      keras.optimizers.LossScaleOptimizer)
    result = train(cine_records, tmp_path, dataclasses.replace(TINY, mixed_precision="mixed_float16"))
    assert np.isfinite(result.history[0]["loss"])


def test_the_mean_pool_control_is_blind_to_the_order_of_the_frames_and_the_lstm_is_not():
    keras.utils.set_random_seed(1)
    pooled = build_model(SPEC, dataclasses.replace(TINY, sequence_model="mean_pool", frame_difference=False))
    keras.utils.set_random_seed(1)
    lstm = build_model(SPEC, dataclasses.replace(TINY, frame_difference=False))
    x = inputs(2, valid=3, seed=4)
    shuffled = {**x, F.FRAMES: x[F.FRAMES][:, [2, 0, 1, 3]]}  # the valid frames reordered, the padding kept
    np.testing.assert_allclose(pooled(x, training=False).numpy(), pooled(shuffled, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(lstm(x, training=False).numpy() - lstm(shuffled, training=False).numpy())) > 1e-4
    assert not any(isinstance(layer, keras.layers.LSTM) for layer in pooled.layers)
    with pytest.raises(ConfigError, match="frame_difference: false"):
        TrainConfig(sequence_model="mean_pool")


def test_a_sequence_of_volumes_is_read_by_a_volume_encoder_and_backbones_refuse_it():
    spec = RecordSpec(4, 16, 16, 1, "uint8", ("a", "b"), depth=3)
    model = build_model(spec, TINY)
    encoder = model.get_layer("per_frame_cnn").layer
    assert encoder.input_shape == (None, 3, 16, 16, 2)  # D, H, W, frame and difference
    assert encoder.get_layer("per_position_cnn").output.shape == (None, 3, 16, 16, 4)  # last conv, unpooled
    assert model.get_layer("frame_features").output.shape == (None, 4, 8)  # mixed across the positions
    frames = np.random.default_rng(0).integers(0, 255, (2, *spec.shape), dtype=np.uint8)
    probs = model({F.FRAMES: frames, F.VALID_FRAMES: np.array([4, 2], np.int32)}, training=False).numpy()
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    swapped = frames.copy()
    swapped[:, :, [0, 2]] = frames[:, :, [2, 0]]  # the outer positions of every volume exchanged
    assert not np.allclose(model({F.FRAMES: swapped, F.VALID_FRAMES: np.array([4, 2], np.int32)},
                                 training=False).numpy(), probs, atol=1e-7)
    with pytest.raises(ConfigError, match="reads 2-D frames"):
        build_model(spec, dataclasses.replace(TINY, encoder="mobilenet_v3_small"))


FRAMES_SPEC = RecordSpec(8, 32, 32, 1, "uint8", ("ed", "es"), target="frames")


def test_a_per_frame_head_answers_every_frame_and_the_causal_one_only_from_the_past():
    """Frames 5.. changed: the causal model's answers at frames 0-4 stay, the model
    standardizing over the whole sequence (the default) moves them; padding answers 0."""
    keras.utils.set_random_seed(2)
    causal = build_model(FRAMES_SPEC, dataclasses.replace(TINY, target="frames", causal=True))
    keras.utils.set_random_seed(2)
    whole = build_model(FRAMES_SPEC, dataclasses.replace(TINY, target="frames"))
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (1, *FRAMES_SPEC.shape), dtype=np.uint8)
    later = frames.copy()
    later[:, 5:] = rng.integers(0, 255, later[:, 5:].shape, dtype=np.uint8)
    for model in (causal, whole):  # a trained head: the zero-initialised one answers 0.5 everywhere
        head = model.get_layer("frame_head")
        head.kernel.assign(np.random.default_rng(4).normal(size=head.kernel.shape).astype(np.float32))
    run = lambda model, x, valid=8: model({F.FRAMES: x, F.VALID_FRAMES: np.array([valid], np.int32)},
                                          training=False).numpy()[0]
    assert run(causal, frames).shape == (8,)
    np.testing.assert_allclose(run(causal, frames)[:5], run(causal, later)[:5], atol=1e-5)
    assert np.max(np.abs(run(causal, frames)[5:] - run(causal, later)[5:])) > 1e-4
    assert np.max(np.abs(run(whole, frames)[:5] - run(whole, later)[:5])) > 1e-4
    shorter = run(causal, frames, valid=5)
    np.testing.assert_allclose(shorter[:5], run(causal, frames)[:5], atol=1e-5)
    assert np.all(shorter[5:] == 0.0)
    pooled = build_model(FRAMES_SPEC, dataclasses.replace(TINY, target="frames", sequence_model="mean_pool",
                                                          frame_difference=False))
    assert run(pooled, frames).shape == (8,)


def test_causal_needs_a_frames_target_and_a_unidirectional_lstm():
    with pytest.raises(ConfigError, match="train.causal: expected target: frames"):
        TrainConfig(causal=True)
    with pytest.raises(ConfigError, match="bidirectional true"):
        TrainConfig(target="frames", causal=True, bidirectional=True)
    assert TrainConfig(target="frames").monitored == ("eval_event_error", "min")


@pytest.mark.parametrize("options", [{}, {"lstm_layers": 2}, {"sequence_norm": False}, {"frame_difference": False}],
                         ids=["default", "two_lstms", "no_norm", "no_difference"])
def test_the_step_model_gives_the_sequence_models_score_at_every_frame(options, tmp_path):
    """A causal model stepped frame by frame, its state carried from call to call, through
    the exported SavedModel's predict_step (state from initial_state): the whole-sequence
    score at every valid frame, and 0 beyond, as the sequence model answers padding."""
    import tensorflow as tf

    from medseq.components.model.runtimes import saved_model_step
    from medseq.components.model.saved_model import export_saved_model
    from medseq.components.model.step import state_tensors, step_through

    keras.utils.set_random_seed(5)
    model = build_model(FRAMES_SPEC, dataclasses.replace(TINY, target="frames", causal=True, **options))
    head = model.get_layer("frame_head")
    head.kernel.assign(np.random.default_rng(4).normal(size=head.kernel.shape).astype(np.float32))
    frames = np.random.default_rng(6).integers(0, 255, (3, *FRAMES_SPEC.shape), dtype=np.uint8)
    valid = np.array([8, 5, 1], np.int32)
    whole = model({F.FRAMES: frames, F.VALID_FRAMES: valid}, training=False).numpy()
    assert np.std(whole[0]) > 1e-3  # a score that moves from frame to frame
    export_saved_model(model, FRAMES_SPEC, tmp_path / "model")
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    states = state_tensors(model, FRAMES_SPEC)
    initial = loaded.signatures[F.INITIAL_STATE_SIGNATURE](batch_size=tf.constant(3))
    assert {k: v.shape for k, v in initial.items()} == {s.key: (3, *s.shape) for s in states}
    assert all(not np.any(v.numpy()) for v in initial.values())  # zeros, as the card says
    stepped = step_through(saved_model_step(loaded.signatures[F.STEP_SIGNATURE]), frames, valid, states)
    np.testing.assert_allclose(stepped, whole, atol=1e-5)
    assert np.all(stepped[1, 5:] == 0.0)


def test_a_model_that_is_not_causal_says_why_it_cannot_stream(tmp_path):
    from medseq.components.model.saved_model import export_saved_model
    from medseq.components.predict.stream import Stream
    from medseq.pipeline.errors import InputError

    whole = build_model(FRAMES_SPEC, dataclasses.replace(TINY, target="frames"))
    export_saved_model(whole, FRAMES_SPEC, tmp_path / "whole")
    with pytest.raises(InputError, match="cannot stream: it standardizes each frame by the whole series"):
        Stream(tmp_path / "whole")
    per_series = build_model(SPEC, TINY)
    export_saved_model(per_series, SPEC, tmp_path / "class")
    with pytest.raises(InputError, match="cannot stream: it answers once per series"):
        Stream(tmp_path / "class")
