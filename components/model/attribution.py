"""Where in each frame: Grad-CAM on the frame encoder's last feature maps.

Grad-CAM (Selvaraju et al. 2017): the gradient of the predicted class's logit with
respect to every frame's last feature maps, averaged over the map to one weight per
channel, weighs the channels; their weighted sum, rectified, says where in that frame
the evidence for the class lies. Computed per frame (each frame has its own weights:
the LSTM reads frames differently), upsampled bilinearly to the frame's H x W, zero on
padded frames, and scaled by the series' largest value, so frames compare with each
other: a frame that mattered more is brighter.

Why Grad-CAM and not the others the issue names: it is one forward and one backward
pass (integrated gradients takes 32 to 64, occlusion one pass per patch and frame), it
reads the model's own feature maps and so passes the model-randomization check of
Adebayo et al. 2018 ("Sanity checks for saliency maps"), where guided backpropagation
does not; and it is class-discriminative. Its price is resolution: the maps are H/8 x
W/8 with the shipped three blocks, so it shows a region, not a pixel's edge.

The computation lives in the SavedModel as the `explain_frames` signature, beside
`predict_frames` (saved_model.py), so TF Serving's clients get it too; `medseq predict
--explain` calls it.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from ...pipeline import features as F
from .network import ANOMALY_SCORE, FEATURE_MAPS, FRAME_HEAD, NEXT_FRAME_HEAD, VALUE_HEAD, head


def grad_cam(model: keras.Model) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """frames (B, T, [D,] H, W, C), valid_frames (B,) -> {probabilities (B, K), class_ids
    (B,), attribution (B, T, [D,] H, W) in [0, 1]} for the predicted class of each series;
    for a value head {value (B,), attribution}: the evidence for a higher value; for a
    per-frame head {frame_values (B, T), attribution}: the evidence for a higher score
    over the series (towards events[0]); for an anomaly model {anomaly_score (B,),
    attribution}: the evidence for a higher score (what the model of normal motion did
    not foresee)."""
    last = head(model)
    anomaly = last.name == NEXT_FRAME_HEAD
    value = last.name in (VALUE_HEAD, FRAME_HEAD) or anomaly
    output = F.VALUE if last.name == VALUE_HEAD else F.ANOMALY_SCORE if anomaly else F.FRAME_VALUES
    tap = keras.Model(model.inputs, [model.get_layer(FEATURE_MAPS).output, last.input, model.output])

    def explain(frames: tf.Tensor, valid_frames: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            maps, hidden, probabilities = tap({F.FRAMES: frames, F.VALID_FRAMES: valid_frames}, training=False)
            tape.watch(maps)
            logits = tf.tensordot(tf.cast(hidden, tf.float32), tf.cast(last.kernel, tf.float32), 1) + \
                tf.cast(last.bias, tf.float32)
            if anomaly:
                probabilities = probabilities[:, ANOMALY_SCORE]
                class_ids, score = None, tf.reduce_sum(probabilities)
            elif value:
                class_ids, score = None, tf.reduce_sum(logits)
            else:
                class_ids = tf.argmax(probabilities, -1, output_type=tf.int32)
                score = tf.reduce_sum(logits * tf.one_hot(class_ids, tf.shape(logits)[-1]))
        grads = tf.cast(tape.gradient(score, maps), tf.float32)  # (B, T, [D,] h, w, F)
        maps = tf.cast(maps, tf.float32)
        weights = tf.reduce_mean(grads, axis=[-3, -2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))  # (B, T, [D,] h, w)
        outer = tf.shape(cam)[:-2]
        height, width = frames.shape[-3], frames.shape[-2]
        small = tf.reshape(cam, tf.concat([[-1], tf.shape(cam)[-2:], [1]], 0))
        cam = tf.reshape(tf.image.resize(small, (height, width), method="bilinear"),
                         tf.concat([outer, [height, width]], 0))
        valid = tf.sequence_mask(valid_frames, tf.shape(cam)[1], tf.float32)
        cam *= tf.reshape(valid, tf.concat([tf.shape(valid), tf.ones([tf.rank(cam) - 2], tf.int32)], 0))
        peak = tf.reduce_max(tf.reshape(cam, [tf.shape(cam)[0], -1]), axis=1)
        cam /= tf.reshape(tf.maximum(peak, 1e-12), tf.concat([[-1], tf.ones([tf.rank(cam) - 1], tf.int32)], 0))
        if value:
            return {output: probabilities, F.ATTRIBUTION: cam}
        return {F.PROBABILITIES: probabilities, F.CLASS_IDS: class_ids, F.ATTRIBUTION: cam}

    return explain
