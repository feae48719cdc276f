"""`medseq validate`: statistics over the records, checked against the schema.

Anomalies: schema violations, a patient in more than one split (leakage), an empty
split, label skew between train and eval beyond an L-infinity bound, and a class with
no eval example; with a baseline (the stats.json of the training records), drift: a
record feature whose distribution moved past its schema `drift_comparator` (TFDV's
L-infinity norm and Jensen-Shannon divergence). Any anomaly fails the stage.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from tensorflow_metadata.proto.v0 import schema_pb2

from ...pipeline import features as F
from ...pipeline.errors import ConfigError, InputError
from ..io import storage
from ..io.beam import pipeline as beam_pipeline
from ..io.dofns import FilesystemDoFn, WriteLinesDoFn
from ..io.records import read_tfrecords
from .schema import infer_schema, load_schema, schema_text
from .stats import PIXEL_MEAN_BINS, RecordStats, SplitStats


@dataclass(frozen=True)
class ValidateOutputs:
    stats: dict[str, Any]
    anomalies: list[dict[str, str]]
    schema_path: str | None
    table: str = ""  # stats.txt: what the CLI prints (OUT may be on an object store)


class ReadRecords(FilesystemDoFn):
    """A gzip TFRecord file's path -> its serialized records (ingest's storage: any
    filesystem, configured in setup for workers that start without the job's options)."""

    def process(self, path: str) -> Iterator[bytes]:
        with storage.open_binary(path) as f:
            yield from read_tfrecords(f)


def split_files(examples_dir: str, split: str) -> list[str]:
    return sorted(storage.match(storage.join(examples_dir, split, "*.tfrecord.gz")))


def compute_stats(examples_dir: str, out: str, schema_bytes: bytes, beam_args: list[str],
                  environment: str = "CLASS") -> dict[str, dict[str, Any]]:
    """Per-split statistics. The workers write them into a staging folder inside `out`
    (where any worker can write: `out` may be an object store), read back here."""
    staging = storage.join(out, f".medseq-staging-validate-{uuid.uuid4().hex[:8]}")
    remote = storage.remote(examples_dir) or storage.remote(out)
    filesystem_args = beam_args if remote else []
    try:
        with beam_pipeline(beam_args) as p:
            per_split = []
            for split in F.SPLITS:
                files = split_files(examples_dir, split)
                if not files:
                    continue
                per_split.append(
                    p | f"{split.title()}Files" >> beam.Create(files)
                    | f"Spread{split.title()}" >> beam.Reshuffle()
                    | f"Read{split.title()}" >> beam.ParDo(ReadRecords(filesystem_args))
                    | f"Summarize{split.title()}" >> beam.ParDo(RecordStats(split, schema_bytes, environment)))
            if per_split:
                _ = (per_split | "AllSplits" >> beam.Flatten()
                     | "StatsPerSplit" >> beam.CombinePerKey(SplitStats())
                     | "ToJson" >> beam.MapTuple(lambda split, stats: json.dumps({"split": split, "stats": stats}))
                     | "WriteStats" >> beam.ParDo(WriteLinesDoFn(storage.join(staging, "stats"), filesystem_args)))
        rows = [json.loads(line) for line in storage.read_lines(storage.join(staging, "stats"))]
    finally:
        if storage.exists(staging):
            storage.delete([staging])
    return {row["split"]: row["stats"] for row in rows}


def _write(out: str, name: str, text: str) -> str:
    path = storage.join(out, name)
    with storage.create(path) as f:
        f.write(text.encode())
    return path


def find_anomalies(stats: dict[str, dict[str, Any]], classes: list[str], max_label_linf: float,
                   max_target_shift: float | None = None, frames: bool = False) -> list[dict[str, str]]:
    """Anomalies of the splits' statistics; `max_target_shift` (in train standard
    deviations) given for records of a value target, whose skew it bounds; `frames` for
    those of a frames target, whose key frames' events (`classes`) are compared between
    splits as a class target's labels are."""
    found: list[dict[str, str]] = []
    value = max_target_shift is not None or frames

    def add(kind: str, split: str, message: str) -> None:
        found.append({"kind": kind, "split": split, "message": message})

    for split in F.SPLITS:
        s = stats.get(split)
        if not s or not s["records"]:
            add("empty_split", split, f"the {split} split holds no records")
            continue
        for key, count in s["schema_anomalies"].items():
            feature, kind = key.split(":", 1)
            add("schema", split, f"{count} record(s): feature '{feature}' {kind.replace('_', ' ')}")
        if len(s["shapes"]) > 1:
            add("schema", split, f"frames shapes differ between records: {sorted(s['shapes'])}")
        unknown = [] if value else sorted(k for k in s["labels"] if not 0 <= int(k) < len(classes))
        if unknown:
            add("schema", split, f"label(s) {', '.join(unknown)} outside the {len(classes)} classes of qc.json")
    patients = {split: set(stats[split]["patients"]) for split in F.SPLITS if split in stats}
    names = list(patients)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = patients[a] & patients[b]
            if shared:
                add("leakage", f"{a}+{b}", f"{len(shared)} patient(s) appear in both {a} and {b}")
    train, evaluation = stats.get("train"), stats.get("eval")
    if value and train and evaluation and "target" in train and "target" in evaluation:
        a, b = train["target"], evaluation["target"]
        shift = abs(a["mean"] - b["mean"]) / max(a["std"], 1e-12)
        if shift > max_target_shift:  # type: ignore[operator]
            add("target_skew", "train+eval", f"the eval values' mean {b['mean']:.4g} lies {shift:.2f} train standard "
                f"deviations from the train values' mean {a['mean']:.4g} (allowed {max_target_shift:.2f})")
    elif frames and train and evaluation:
        def shares(s: dict[str, Any]) -> list[float]:
            counts = s.get("frame_labels", {}).get("key_frames", {})
            total = max(sum(counts.values()), 1)
            return [counts.get(str(i), 0) / total for i in range(len(classes))]
        linf = max((abs(p - q) for p, q in zip(shares(train), shares(evaluation), strict=True)), default=0.0)
        if linf > max_label_linf:
            add("label_skew", "train+eval", f"the key frames' event shares differ by L-inf {linf:.3f} "
                f"(allowed {max_label_linf:.3f})")
        missing = [c for i, c in enumerate(classes)
                   if not evaluation.get("frame_labels", {}).get("key_frames", {}).get(str(i))]
        if missing:
            add("class_missing_in_eval", "eval", f"no eval key frame of event(s): {', '.join(missing)}")
    elif train and evaluation and train["records"] and evaluation["records"]:
        def dist(s: dict[str, Any]) -> list[float]:
            return [s["labels"].get(str(i), 0) / s["records"] for i in range(len(classes))]
        linf = max((abs(p - q) for p, q in zip(dist(train), dist(evaluation), strict=True)), default=0.0)
        if linf > max_label_linf:
            add("label_skew", "train+eval", f"label distributions differ by L-inf {linf:.3f} "
                f"(allowed {max_label_linf:.3f})")
        missing = [c for i, c in enumerate(classes) if not evaluation["labels"].get(str(i))]
        if missing:
            add("class_missing_in_eval", "eval", f"no eval example of class(es): {', '.join(missing)}")
    return found


# The statistic each record feature's drift comparator reads (stats.py).
DRIFT_STATISTICS = {F.MODALITY: ("values", "modality"), F.MANUFACTURER: ("values", "manufacturer"),
                    F.SITE: ("values", "site"), F.VALID_FRAMES: ("histograms", "valid_frames"),
                    F.FRAMES: ("histograms", "pixel_mean")}
DRIFT_COMPARATORS = {"infinity_norm": "L-inf", "jensen_shannon_divergence": "Jensen-Shannon divergence"}
DRIFT_SPLIT = "baseline"  # an anomaly's `split` for a drift: these records against the baseline's train split


def _shares(baseline: dict[str, int], current: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The values of either distribution, and each one's share of the baseline's and the
    current records."""
    keys = sorted(set(baseline) | set(current))

    def share(counts: dict[str, int]) -> np.ndarray:
        total = max(sum(counts.values()), 1)
        return np.array([counts.get(k, 0) / total for k in keys], np.float64)
    return keys, share(baseline), share(current)


def distance(comparator: str, p: np.ndarray, q: np.ndarray) -> float:
    """TFDV's drift distances between two distributions of shares (`_shares`):
    `infinity_norm` the largest change of one value's share; `jensen_shannon_divergence`
    in bits (0 to 1)."""
    if comparator == "infinity_norm":
        return float(np.max(np.abs(p - q), initial=0.0))
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        kept = a > 0
        return float(np.sum(a[kept] * np.log2(a[kept] / m[kept])))
    return max((kl(p) + kl(q)) / 2, 0.0)


def pooled(stats: dict[str, dict[str, Any]], group: str, name: str) -> dict[str, int]:
    """One statistic summed over every split of `stats`."""
    total: Counter[str] = Counter()
    for s in stats.values():
        total.update(s.get(group, {}).get(name, {}))
    return dict(total)


def find_drift(baseline: dict[str, Any], stats: dict[str, dict[str, Any]],
               schema: schema_pb2.Schema) -> list[dict[str, str]]:
    """TFDV's drift check: every record feature with a `drift_comparator` in `schema`,
    the records of every split of `stats` pooled against the baseline's train split (the
    statistics of the records the model was trained on, `baseline` a stats.json)."""
    train = baseline.get("splits", {}).get("train")
    if not train or not train.get("records"):
        raise InputError("--baseline: expected the stats.json of `medseq validate` on the training records, with "
                         "a train split; found none")
    found = []
    for feature in schema.feature:
        if not feature.HasField("drift_comparator") or feature.name not in DRIFT_STATISTICS:
            continue
        comparator = next((c for c in DRIFT_COMPARATORS if feature.drift_comparator.HasField(c)), None)
        if comparator is None:
            raise ConfigError(f"schema: feature '{feature.name}' drift_comparator: expected infinity_norm or "
                              "jensen_shannon_divergence, found another comparator")
        threshold = getattr(feature.drift_comparator, comparator).threshold
        group, name = DRIFT_STATISTICS[feature.name]
        if group not in train:
            raise InputError(f"--baseline: its stats.json has no {group}; expected one written by this medseq's "
                             "validate (run it again on the training records)")
        keys, p, q = _shares(train[group].get(name, {}), pooled(stats, group, name))
        d = distance(comparator, p, q)
        if d > threshold:
            i = int(np.argmax(np.abs(p - q)))
            value = (f"pixel mean {int(keys[i]) / PIXEL_MEAN_BINS:.2f}-{(int(keys[i]) + 1) / PIXEL_MEAN_BINS:.2f}"
                     if name == "pixel_mean" else repr(keys[i]))
            found.append({"kind": "drift", "split": DRIFT_SPLIT,
                          "message": f"feature '{feature.name}' drifted: {DRIFT_COMPARATORS[comparator]} {d:.3f} "
                                     f"against the baseline's train split (threshold {threshold:g}); the largest "
                                     f"change: {value} {p[i]:.0%} -> {q[i]:.0%} of the records"})
    return found


def table(stats: dict[str, dict[str, Any]], classes: list[str]) -> str:
    lines = [f"{'split':<6} {'records':>7} {'patients':>8}  {'labels':<28} {'frames(min/mean/max)':<22} "
             f"{'pixel mean±std':<16} shape/dtype"]
    for split in F.SPLITS:
        s = stats.get(split)
        if not s:
            lines.append(f"{split:<6} {0:>7} {0:>8}")
            continue
        labels = " ".join(f"{classes[int(k)] if 0 <= int(k) < len(classes) else k}={v}" for k, v in s["labels"].items())
        if "target" in s:
            labels = f"value {s['target']['mean']:.4g}±{s['target']['std']:.3g}"
        if "frame_labels" in s:  # key frames per event, and the frames with a weight
            keys = s["frame_labels"]["key_frames"]
            labels = " ".join(f"{classes[int(k)] if 0 <= int(k) < len(classes) else k}={v}" for k, v in keys.items()) \
                + f" ({s['frame_labels']['labeled_frames']:.0f} fr)"
        vf = s["valid_frames"]
        px = s["pixels"]
        lines.append(f"{split:<6} {s['records']:>7} {len(s['patients']):>8}  {labels:<28} "
                     f"{vf['min']}/{vf['mean']:.1f}/{vf['max']:<14} {px['mean']:.3f}±{px['std']:.3f}    "
                     f"{','.join(s['shapes'])}/{','.join(s['dtypes'])}")
    return "\n".join(lines)


def load_baseline(path: str) -> dict[str, Any]:
    """A validate output folder's stats.json (or the file itself), local or remote."""
    found = path if path.endswith(".json") else storage.join(path, F.STATS_FILE)
    if not storage.exists(found):
        raise InputError(f"--baseline {path}: no {F.STATS_FILE}; expected the output folder of `medseq validate` "
                         "on the training records, or its stats.json")
    with storage.open_binary(found) as f:
        try:
            data: dict[str, Any] = json.loads(f.read())
        except ValueError:
            raise InputError(f"--baseline {found}: not JSON; expected the stats.json of `medseq validate`") from None
    return data


def validate(examples_dir: str, out: str | Path, schema_path: str | None = None, infer: bool = False,
             max_label_linf: float = 0.3, beam_args: list[str] | None = None,
             max_target_shift: float = 0.5, baseline: str | None = None) -> ValidateOutputs:
    """Statistics of the records in `examples_dir` (local or on any Beam filesystem)
    checked against the schema; stats.json, stats.txt and anomalies.json into `out`.
    With `baseline` (a validate output of the training records, or its stats.json) the
    records are a new batch: checked against the schema and for drift from the
    baseline's train split, not for the structure of a training set's splits."""
    out = str(out)
    reference = load_baseline(baseline) if baseline else None
    qc_path = storage.join(examples_dir, F.QC_FILE)
    if not storage.exists(qc_path):
        raise InputError(f"{examples_dir}: no {F.QC_FILE}; expected the output folder of `medseq convert`")
    with storage.open_binary(qc_path) as f:
        qc = json.loads(f.read())
    classes = qc["classes"]
    kind = qc.get("target", {}).get("kind", "class")
    schema = load_schema(schema_path)
    if not storage.remote(out):
        os.makedirs(out, exist_ok=True)
    stats = compute_stats(examples_dir, out, schema.SerializeToString(), beam_args or [], kind.upper())
    written = None
    if infer:
        if "train" not in stats:
            raise InputError(f"{examples_dir}/train: no records to infer a schema from")
        written = _write(out, "schema.pbtxt", schema_text(infer_schema(stats["train"], classes)))
    anomalies = find_anomalies(stats, classes, max_label_linf, max_target_shift if kind == "value" else None,
                               frames=kind == "frames")
    if reference is not None:
        anomalies = [a for a in anomalies if a["kind"] == "schema"] + find_drift(reference, stats, schema)
    public = {split: {k: v for k, v in s.items() if k != "patients"} | {"patient_count": len(s["patients"])}
              for split, s in stats.items()}
    _write(out, F.STATS_FILE, json.dumps({"classes": classes, "target": kind, "splits": public}, indent=2,
                                         sort_keys=True))
    _write(out, F.ANOMALIES_FILE, json.dumps(anomalies, indent=2))
    text = table(stats, classes) + "\n"
    _write(out, "stats.txt", text)
    return ValidateOutputs(public, anomalies, written, text)
