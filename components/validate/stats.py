"""The statistics Beam job: one pass over every split's records.

Per split: record count, labels, valid_frames, frames shape and dtype, presence and
value counts of every feature, pixel mean/std overall and per site and manufacturer,
schema anomaly counts, and the set of patient keys (for the leakage check); the
distributions a drift comparison reads (the records per modality, manufacturer and site,
per valid frame count, and per bin of their pixel mean).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from ...pipeline import features as F
from .schema import check_record

_FLOATS = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8}
PIXEL_MEAN_BINS = 20  # the records' pixel means (0-1) in bins of 0.05: what a drift in intensity shows in


def _values(example: Any) -> dict[str, tuple[str, list[Any]]]:
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            out[name] = ("bytes", list(feature.bytes_list.value))
        elif kind == "int64_list":
            out[name] = ("int", list(feature.int64_list.value))
        elif kind == "float_list":
            out[name] = ("float", list(feature.float_list.value))
        else:
            out[name] = ("none", [])
    return out


def _first(values: dict[str, tuple[str, list[Any]]], name: str, default: Any = None) -> Any:
    vals = values.get(name, ("", []))[1]
    return vals[0] if vals else default


class RecordStats(beam.DoFn):
    """serialized tf.Example -> (split, one-record summary)."""

    def __init__(self, split: str, schema_bytes: bytes, environment: str = "CLASS") -> None:
        self.split, self.schema_bytes, self.environment = split, schema_bytes, environment

    def setup(self) -> None:
        from tensorflow.core.example import example_pb2  # heavy import, once per worker
        from tensorflow_metadata.proto.v0 import schema_pb2

        self.example_cls = example_pb2.Example
        self.schema = schema_pb2.Schema.FromString(self.schema_bytes)
        self.records = Metrics.counter("validate", "records")

    def process(self, serialized: bytes) -> Iterable[tuple[str, dict[str, Any]]]:
        self.records.inc()
        values = _values(self.example_cls.FromString(serialized))
        anomalies = check_record(self.schema, values, self.environment)
        dtype = (_first(values, F.FRAMES_DTYPE, b"") or b"").decode(errors="replace")
        shape = tuple(values.get(F.FRAMES_SHAPE, ("", []))[1])
        mean = sq = 0.0
        n = 0
        raw = _first(values, F.FRAMES)
        if raw is not None and dtype in _FLOATS and shape:
            pixels = np.frombuffer(raw, _FLOATS[dtype]).astype(np.float64)
            if pixels.size != int(np.prod(shape)):
                anomalies.append(f"{F.FRAMES}:size_does_not_match_shape")
            else:
                pixels = pixels / 255.0 if dtype == "uint8" else pixels
                n, mean, sq = pixels.size, float(pixels.mean()), float((pixels**2).mean())
        summary = {
            "features": {k: (kind, len(v)) for k, (kind, v) in values.items()},
            "label": _first(values, F.LABEL, -1),
            "target": _first(values, F.TARGET),
            # A frames target: its key frames' events and its output frames with a weight.
            "events": values.get(F.KEY_EVENTS, ("", []))[1] if F.KEY_EVENTS in values else None,
            "labeled_frames": float(sum(values.get(F.FRAME_WEIGHTS, ("", []))[1])),
            "valid_frames": _first(values, F.VALID_FRAMES, 0),
            "shape": shape, "dtype": dtype,
            "patient_key": (_first(values, F.PATIENT_KEY, b"") or b"").decode(errors="replace"),
            "site": (_first(values, F.SITE, b"") or b"").decode(errors="replace"),
            "manufacturer": (_first(values, F.MANUFACTURER, b"") or b"").decode(errors="replace"),
            "modality": (_first(values, F.MODALITY, b"") or b"").decode(errors="replace"),
            "pixels": (n, mean, sq), "anomalies": anomalies,
        }
        yield self.split, summary


class _Moments:
    """Pixel count, sum and sum of squares, held exactly (Fractions of the floats): the
    statistics come out to the bit whatever order a runner folds the records in."""

    @staticmethod
    def new() -> list[Any]:
        return [0, Fraction(0), Fraction(0)]

    @staticmethod
    def add(acc: list[Any], n: int, mean: float, sq: float) -> None:
        acc[0] += n
        acc[1] += Fraction(mean) * n
        acc[2] += Fraction(sq) * n

    @staticmethod
    def merge(acc: list[Any], other: list[Any]) -> None:
        for i in range(3):
            acc[i] += other[i]

    @staticmethod
    def summary(acc: list[Any]) -> dict[str, float]:
        mean = acc[1] / acc[0] if acc[0] else Fraction(0)
        variance = acc[2] / acc[0] - mean ** 2 if acc[0] else Fraction(0)
        return {"mean": float(mean), "std": float(np.sqrt(max(float(variance), 0.0))), "pixels": acc[0]}


def _range(a: list[float], b: list[float]) -> list[float]:
    """[min, max] of two [min, max] ranges, either possibly empty."""
    if not a or not b:
        return list(a or b)
    return [min(a[0], b[0]), max(a[1], b[1])]


def _target_summary(acc: dict[str, Any]) -> dict[str, float]:
    moments = _Moments.summary(acc["targets"])
    return {"count": moments["pixels"], "mean": moments["mean"], "std": moments["std"],
            "min": acc["target_range"][0], "max": acc["target_range"][1]}


class SplitStats(beam.CombineFn):
    """Folds one split's record summaries into its statistics."""

    def create_accumulator(self) -> dict[str, Any]:
        return {"records": 0, "labels": Counter(), "valid_frames": Counter(), "shapes": Counter(),
                "dtypes": Counter(), "present": Counter(), "kinds": {}, "value_counts": {},
                "values": {"modality": Counter(), "frames_dtype": Counter(), "manufacturer": Counter(),
                           "site": Counter()},
                "pixel_means": Counter(),
                "pixels": _Moments.new(), "targets": _Moments.new(), "target_range": [], "by_site": {},
                "by_manufacturer": {}, "anomalies": Counter(), "patients": set(), "events": Counter(),
                "labeled_frames": 0.0}

    def add_input(self, acc: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
        acc["records"] += 1
        if s.get("events") is not None:
            acc["events"].update(s["events"])
            acc["labeled_frames"] += s["labeled_frames"]
        elif s["target"] is None:
            acc["labels"][s["label"]] += 1
        else:
            _Moments.add(acc["targets"], 1, s["target"], s["target"] ** 2)
            acc["target_range"] = _range(acc["target_range"], [s["target"]] * 2)
        acc["valid_frames"][s["valid_frames"]] += 1
        acc["shapes"][s["shape"]] += 1
        acc["dtypes"][s["dtype"]] += 1
        for name, (kind, count) in s["features"].items():
            acc["present"][name] += 1
            acc["kinds"][name] = kind
            acc["value_counts"].setdefault(name, Counter())[count] += 1
        acc["values"]["modality"][s["modality"]] += 1
        acc["values"]["frames_dtype"][s["dtype"]] += 1
        acc["values"]["manufacturer"][s["manufacturer"]] += 1
        acc["values"]["site"][s["site"]] += 1
        if s["pixels"][0]:
            acc["pixel_means"][min(int(s["pixels"][1] * PIXEL_MEAN_BINS), PIXEL_MEAN_BINS - 1)] += 1
        _Moments.add(acc["pixels"], *s["pixels"])
        _Moments.add(acc["by_site"].setdefault(s["site"], _Moments.new()), *s["pixels"])
        _Moments.add(acc["by_manufacturer"].setdefault(s["manufacturer"], _Moments.new()), *s["pixels"])
        acc["anomalies"].update(s["anomalies"])
        acc["patients"].add(s["patient_key"])
        return acc

    def merge_accumulators(self, accs: Iterable[dict[str, Any]]) -> dict[str, Any]:
        accs = list(accs)
        out = accs[0]
        for acc in accs[1:]:
            out["records"] += acc["records"]
            out["labeled_frames"] += acc["labeled_frames"]
            for key in ("labels", "valid_frames", "shapes", "dtypes", "present", "anomalies", "events", "pixel_means"):
                out[key].update(acc[key])
            out["kinds"].update(acc["kinds"])
            for name, counts in acc["value_counts"].items():
                out["value_counts"].setdefault(name, Counter()).update(counts)
            for name in out["values"]:
                out["values"][name].update(acc["values"][name])
            _Moments.merge(out["pixels"], acc["pixels"])
            _Moments.merge(out["targets"], acc["targets"])
            out["target_range"] = _range(out["target_range"], acc["target_range"])
            for key in ("by_site", "by_manufacturer"):
                for group, moments in acc[key].items():
                    _Moments.merge(out[key].setdefault(group, _Moments.new()), moments)
            out["patients"] |= acc["patients"]
        return out

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        frames = sorted(acc["valid_frames"].elements())
        return {
            "records": acc["records"],
            "labels": {str(k): v for k, v in sorted(acc["labels"].items())},
            "valid_frames": {"min": frames[0] if frames else 0, "max": frames[-1] if frames else 0,
                             "mean": float(np.mean(frames)) if frames else 0.0},
            "shapes": {"x".join(map(str, k)): v for k, v in acc["shapes"].items()},
            "dtypes": dict(acc["dtypes"]),
            "features": {name: {"kind": acc["kinds"][name], "present": acc["present"][name],
                                "value_counts": {str(k): v for k, v in acc["value_counts"][name].items()}}
                         for name in sorted(acc["present"])},
            "values": {k: dict(sorted(v.items())) for k, v in acc["values"].items()},
            # What a drift comparison reads beside `values`: records per count of valid
            # frames, and per bin of their pixel mean (bin i: [i, i + 1) / PIXEL_MEAN_BINS).
            "histograms": {"valid_frames": {str(k): v for k, v in sorted(acc["valid_frames"].items())},
                           "pixel_mean": {str(k): v for k, v in sorted(acc["pixel_means"].items())}},
            "pixels": _Moments.summary(acc["pixels"]),
            **({"target": _target_summary(acc)} if acc["targets"][0] else {}),
            # A frames target: key frames per event (by index) and the output frames with a weight.
            **({"frame_labels": {"key_frames": {str(k): v for k, v in sorted(acc["events"].items())},
                                 "labeled_frames": acc["labeled_frames"]}} if acc["events"] else {}),
            "pixels_by_site": {k: _Moments.summary(v) for k, v in sorted(acc["by_site"].items())},
            "pixels_by_manufacturer": {k: _Moments.summary(v) for k, v in sorted(acc["by_manufacturer"].items())},
            "schema_anomalies": dict(sorted(acc["anomalies"].items())),
            "patients": sorted(acc["patients"]),
        }
