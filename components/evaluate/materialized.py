"""TFMA's input: the eval records with each model's predictions in them, as features.

evaluate runs every model once, in its own process (`inference.predict_split`: the
bootstrap intervals, the temporal controls and the report need the same numbers), and
TFMA computes its metrics from those predictions (its model-agnostic evaluation: a
`prediction_key` names a feature). TFMA's Beam job then needs no model and no record
file: its workers may run anywhere, with no disk shared with this process and no
TensorFlow filesystem for the records' store (TensorFlow 2.21 has no s3://).

Each record keeps every feature but its pixels (any of them can slice), and gains, for
model M, `M__probabilities` (one float per class), `M__class_ids` and, with two
classes, `M__probability` (the positive class): the outputs of the exported signatures.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow as tf
from tensorflow_model_analysis.proto import config_pb2

from ...pipeline import features as F
from ...pipeline.errors import EvaluationFailed
from ..model.events import SUMMARY

PIXELS = (F.FRAMES,)  # dropped: TFMA never reads them, and they are most of a record


def feature(model: str, output: str) -> str:
    return f"{model}__{output}"


EVENT_SUMMARY = "event_summary"  # a frames target's per-series summary (model/events.py series_summary)
SUMMARY_LABEL = "medseq__summary_label"  # its label key: zeros of its shape (TFMA's metrics read no label)


def outputs(probs: np.ndarray | Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """The exported signatures' outputs, from their probabilities (N, K), or a value
    target's values (N,); outputs already made (a frames target's summary) as they are."""
    if isinstance(probs, Mapping):
        return probs
    if probs.ndim == 1:
        return {F.VALUE: probs}
    out = {F.PROBABILITIES: probs, F.CLASS_IDS: probs.argmax(-1)}
    if probs.shape[1] == 2:
        out["probability"] = probs[:, 1]
    return out


def materialized_config(config: config_pb2.EvalConfig) -> config_pb2.EvalConfig:
    """`config` with each model spec's prediction key(s) renamed to that model's
    features, and no signature: TFMA reads the predictions from the records."""
    done = config_pb2.EvalConfig()
    done.CopyFrom(config)
    for spec in done.model_specs:
        spec.ClearField("signature_name")
        if spec.prediction_key:
            spec.prediction_key = feature(spec.name, spec.prediction_key)
        for name in list(spec.prediction_keys):
            spec.prediction_keys[name] = feature(spec.name, spec.prediction_keys[name])
    return done


def _records(files: list[str]) -> Iterator[bytes]:
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        yield bytes(record)


def with_predictions(files: list[str], probs: Mapping[str, np.ndarray | Mapping[str, np.ndarray]]) -> list[bytes]:
    """The records of `files` (in the order `predict_split` read them) without pixels,
    each with every model's outputs for it; `probs`: model name -> (N, K), or its outputs."""
    per_model = {model: outputs(p) for model, p in probs.items()}
    count = min(len(next(iter(p.values()))) for p in per_model.values())
    out: list[bytes] = []
    for i, serialized in enumerate(_records(files)):
        if i >= count:
            raise EvaluationFailed(f"the eval split changed while it was evaluated ({i + 1}+ records, "
                                   f"{count} predicted): run evaluate again")
        example = tf.train.Example.FromString(serialized)
        for name in PIXELS:
            del example.features.feature[name]
        if any(EVENT_SUMMARY in values for values in per_model.values()):
            example.features.feature[SUMMARY_LABEL].float_list.value.extend([0.0] * len(SUMMARY))
        for model, values in per_model.items():
            for output, value in values.items():
                target = example.features.feature[feature(model, output)]
                row = np.atleast_1d(value[i])
                if np.issubdtype(row.dtype, np.integer):
                    target.int64_list.value.extend(int(v) for v in row)
                else:
                    target.float_list.value.extend(float(v) for v in row)
        out.append(example.SerializeToString(deterministic=True))
    if len(out) != count:
        raise EvaluationFailed(f"the eval split changed while it was evaluated ({len(out)} records, "
                               f"{count} predicted): run evaluate again")
    return out
