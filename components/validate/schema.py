"""The record schema (a tensorflow_metadata Schema): load, check one record, infer.

TFDV is not installable on this stack (no 1.21 release); these are the checks of its
ExampleValidator that the record contract needs: presence, type, value count / fixed
shape, int/float domains and string domains, and features the schema does not know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from ...pipeline.config import DEFAULT_SCHEMA
from ...pipeline.errors import ConfigError

KIND_OF_TYPE = {schema_pb2.BYTES: "bytes", schema_pb2.INT: "int", schema_pb2.FLOAT: "float"}


def load_schema(path: str | Path | None = None) -> schema_pb2.Schema:
    path = Path(path) if path else DEFAULT_SCHEMA
    try:
        return text_format.Parse(path.read_text(), schema_pb2.Schema())
    except FileNotFoundError:
        raise ConfigError(f"schema not found: {path}") from None
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: not a valid tensorflow_metadata Schema text proto ({exc})") from None


def _string_domain(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> set[str] | None:
    if feature.HasField("string_domain"):
        return set(feature.string_domain.value)
    if feature.HasField("domain"):
        for domain in schema.string_domain:
            if domain.name == feature.domain:
                return set(domain.value)
    return None


def in_environment(feature: schema_pb2.Feature, environment: str) -> bool:
    """TFDV's rule: a feature that names environments (`in_environment`) belongs to those
    only, and to none it excludes (`not_in_environment`). medseq's environments are the
    target kinds, CLASS, VALUE and FRAMES (qc.json `target.kind`)."""
    if feature.in_environment:
        return environment in feature.in_environment
    return environment not in feature.not_in_environment


def check_record(schema: schema_pb2.Schema, values: dict[str, tuple[str, list[Any]]],
                 environment: str = "CLASS") -> list[str]:
    """Anomaly keys ('feature:kind') of one record given {name: (kind, values)}, the
    schema's features taken in `environment`."""
    found: list[str] = []
    features = [f for f in schema.feature if in_environment(f, environment)]
    known = {f.name for f in features}
    found += [f"{name}:unexpected_feature" for name in values if name not in known]
    for feature in features:
        if feature.name not in values:
            if feature.presence.min_fraction >= 1.0:
                found.append(f"{feature.name}:missing")
            continue
        kind, vals = values[feature.name]
        if feature.type in KIND_OF_TYPE and KIND_OF_TYPE[feature.type] != kind:
            found.append(f"{feature.name}:wrong_type")
            continue
        n = len(vals)
        if feature.HasField("shape"):
            size = 1
            for dim in feature.shape.dim:
                size *= dim.size
            if n != size:
                found.append(f"{feature.name}:wrong_shape")
        elif feature.HasField("value_count") and not (
                feature.value_count.min <= n <= (feature.value_count.max or n)):
            found.append(f"{feature.name}:wrong_value_count")
        if feature.HasField("int_domain"):
            dom = feature.int_domain
            if any((dom.HasField("min") and v < dom.min) or (dom.HasField("max") and v > dom.max) for v in vals):
                found.append(f"{feature.name}:out_of_domain")
        elif feature.HasField("float_domain"):
            dom = feature.float_domain
            if any((dom.HasField("min") and v < dom.min) or (dom.HasField("max") and v > dom.max) for v in vals):
                found.append(f"{feature.name}:out_of_domain")
        domain = _string_domain(schema, feature)
        if domain is not None and any(v.decode(errors="replace") not in domain for v in vals):
            found.append(f"{feature.name}:unknown_value")
    return found


def infer_schema(stats: dict[str, Any], classes: list[str]) -> schema_pb2.Schema:
    """A starting schema from the train split's statistics."""
    schema = schema_pb2.Schema()
    kinds = {"bytes": schema_pb2.BYTES, "int": schema_pb2.INT, "float": schema_pb2.FLOAT}
    count = stats["records"]
    for name, info in sorted(stats["features"].items()):
        feature = schema.feature.add(name=name, type=kinds[info["kind"]])
        feature.presence.min_fraction = 1.0 if info["present"] == count else round(info["present"] / max(count, 1), 3)
        feature.presence.min_count = 1
        lengths = info["value_counts"]
        if len(lengths) == 1 and name not in ("frames",):
            feature.shape.dim.add(size=int(next(iter(lengths))))
        else:
            feature.value_count.min = min(int(k) for k in lengths)
            feature.value_count.max = max(int(k) for k in lengths)
    by_name = {f.name: f for f in schema.feature}
    if "label" in by_name:
        by_name["label"].int_domain.min, by_name["label"].int_domain.max = 0, max(len(classes) - 1, 0)
    if "valid_frames" in by_name:
        by_name["valid_frames"].int_domain.min = 1
    for name in ("modality", "frames_dtype"):
        if name in by_name:
            by_name[name].string_domain.name = name
            by_name[name].string_domain.value.extend(sorted(stats["values"].get(name, {})))
    for shipped in load_schema().feature:  # the shipped drift thresholds, a starting point too
        if shipped.HasField("drift_comparator") and shipped.name in by_name:
            by_name[shipped.name].drift_comparator.CopyFrom(shipped.drift_comparator)
    return schema


def schema_text(schema: schema_pb2.Schema) -> str:
    return text_format.MessageToString(schema)
