"""Every series under a raw DICOM folder -> class probabilities.

It runs the very preprocessing ingest ran (the config travels inside the SavedModel,
assets.extra/medseq_spec.json) and calls the model's `predict_frames` signature. A
series that cannot be read gets its rejection reason; the others still get predicted.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...pipeline import features as F
from ...pipeline.config import SAFE_PIXEL_PHI, PixelPhiConfig, PreprocessConfig, from_dict
from ...pipeline.errors import InputError
from ..ingest.frame_targets import series_sources
from ..ingest.in_process import LocalGraph
from ..ingest.steps import (
    IDENTIFIERS,
    REJECTED,
    SILENT,
    PrepareSeriesStep,
    ReadHeaderStep,
    RejectedRow,
    source_colour,
    vendor,
)
from ..ingest.steps import PreparedSeries as PreparedSeriesOf
from ..io import deid, storage
from ..model.domain import SeriesFacts, findings, score_finding
from ..model.events import to_source, turning_points
from ..preprocessing import reasons
from ..preprocessing.headers import FileHeader
from ..preprocessing.limits import DEFAULT_LIMITS, InputLimits
from ..preprocessing.reasons import Rejected
from ..preprocessing.transform import Prepared

ANOMALOUS = "anomalous"  # an anomaly model's label above its threshold
OUTSIDE_DOMAIN = "outside_domain"  # a series the model was never trained on (model/domain.py)
OUTSIDE_DOMAIN_POLICIES = ("refuse", "warn")

if TYPE_CHECKING:
    from ..model.runtimes import Predict


@dataclass(frozen=True)
class Prediction:
    series: str  # folder of the series relative to the input, identifying parts hashed
    series_key: str  # keyed hash of the series, as in the records (under the same key)
    label: str | None
    probabilities: dict[str, float]
    rejected: str | None = None  # reason code when the series (or, series_key "", a file) could not be read
    message: str = ""  # what was expected and found, for a rejected series
    # Where the series differs from the model's training domain (model/domain.py): what was
    # never seen (only with outside_domain="warn"; else the series is rejected) and what is unusual.
    domain: tuple[str, ...] = ()
    domain_score: float | None = None  # of a SavedModel that gives one (model/domain.py)
    frame_importance: tuple[float, ...] = field(default=(), repr=False)  # --explain: one per valid frame
    # --explain: Grad-CAM of the predicted class, (T, [D,] H, W) in [0, 1], and the frames it
    # is of (the model's input), for the overlays; None for a model without explain_frames.
    attribution: np.ndarray | None = field(default=None, repr=False, compare=False)
    frames: np.ndarray | None = field(default=None, repr=False, compare=False)
    value: float | None = None  # a value target's prediction (label None, no probabilities), in `units`
    units: str = ""
    # A frames target (label None, no probabilities): the phase score of each valid frame,
    # and the events read back from it (model/events.py): name -> source frames, with ms
    # where the series has a frame interval.
    frame_values: tuple[float, ...] = field(default=(), repr=False)
    events: dict[str, tuple[float, ...]] = field(default_factory=dict)
    interval_ms: float = 0.0
    # An anomaly model (label: its normal class, or ANOMALOUS above its threshold): the
    # share of the series' frame-to-frame change the model of normal motion did not foresee.
    anomaly_score: float | None = None

    def to_json(self) -> dict[str, object]:
        if self.rejected:
            return {"series": self.series, "series_key": self.series_key, "rejected": self.rejected,
                    "message": self.message}
        out: dict[str, object] = {"series": self.series, "series_key": self.series_key}
        if self.anomaly_score is not None:
            out.update(label=self.label, anomaly_score=round(self.anomaly_score, 4))
        elif self.value is not None:
            out.update(value=round(self.value, 6), units=self.units)
        elif self.frame_values:
            out.update(frame_values=[round(v, 6) for v in self.frame_values], events={
                name: [{"frame": round(at, 3), **({"ms": round(at * self.interval_ms, 1)} if self.interval_ms else {})}
                       for at in found] for name, found in self.events.items()})
        else:
            out.update(label=self.label, probabilities=self.probabilities)
        if self.domain_score is not None:
            out[F.DOMAIN_SCORE] = round(self.domain_score, 4)
        if self.domain:
            out["domain"] = list(self.domain)
        if self.frame_importance:
            out["frame_importance"] = list(self.frame_importance)
        return out


@dataclass(frozen=True)
class PreparedSeries:
    where: str
    series_key: str
    item: Prepared | Rejected
    facts: SeriesFacts | None = None  # what the domain check reads (None for a rejected item)
    # The source frame each output frame shows, and the ms between source frames (0 unknown).
    sources: np.ndarray | None = field(default=None, repr=False, compare=False)
    interval_ms: float = 0.0


def prepare_folder(root: str | Path, config: PreprocessConfig, key: bytes | None = None,
                   phi: PixelPhiConfig = SAFE_PIXEL_PHI, limits: InputLimits = DEFAULT_LIMITS) -> list[PreparedSeries]:
    """Every series under `root` through ingest's own steps, run by its in-process
    executor (ingest/in_process.py): the same discovery, header rules, grouping,
    preprocessing, `limits` (inflate, decoded size, decode time), duplicate handling and
    exception policy. In folder order, after the files that are no part of a series
    (series_key "", item: why); a series' duplicate instances are listed after it.

    Series are named by their folder relative to `root`, with any part that may carry
    an identifier replaced by a keyed hash (MEDSEQ_HASH_KEY, else a per-run random key)
    under one rule for the whole folder, as ingest names them in rejected.jsonl.
    """
    key = key or deid.key_from_environment() or secrets.token_bytes(32)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"input not found: {root} (expected a folder of DICOM files)")
    graph, folder = LocalGraph(), str(root)
    read = ReadHeaderStep(folder, key, limits=limits, progress=SILENT)
    headers, unread, identifiers = graph.pardo("ReadHeaders", graph.files("MatchFiles", storage.join(folder, "**")),
                                               read, (REJECTED, IDENTIFIERS))
    groups = graph.group("GroupBySeries", headers)
    prepare = PrepareSeriesStep(folder, key, config, limits=limits, pixel_phi=phi, progress=SILENT)
    parts, rejected = graph.pardo("PrepareSeries", groups, prepare, (REJECTED,))
    tokens = {token for token, _ in graph.sum_per_key("IdentifierTokens", identifiers)}
    name = lambda path, own=frozenset(): deid.safe_path(path, key, deid.AnyOf(own, tokens)) or "."
    # In folder order: each series' rejection or its inputs (by slice position), then its duplicate files.
    first = {deid.keyed_hash(key, "series", source): min(FileHeader.from_bytes(data).path for data in grouped)
             for source, grouped in groups}

    def order(item: PreparedSeriesOf | RejectedRow) -> tuple[str, int, int]:
        if isinstance(item, RejectedRow):
            return first[item.series_key], 2 if item.reason == reasons.DUPLICATE_INSTANCE else 0, 0
        return first[deid.keyed_hash(key, "series", item.source)], 1, item.ordered.position or 0

    out = [PreparedSeries(name(row.path, row.identifiers), "", Rejected(row.reason, row.message)) for row in unread]
    for item in sorted([*parts, *rejected], key=order):
        if isinstance(item, RejectedRow):
            out.append(PreparedSeries(name(item.path, item.identifiers), item.series_key,
                                      Rejected(item.reason, item.message)))
            continue
        paths = sorted(h.path for h in item.headers)  # the folder the series' files share ("." for the input's own)
        where = name(deid.relative(os.path.commonpath(paths) if len(paths) > 1 else paths[0], folder))
        position, header = item.ordered.position, item.headers[0]
        facts = SeriesFacts(header.modality, vendor(header.manufacturer), source_colour(header), item.ordered.axis,
                            item.prepared.valid_frames, tuple(item.prepared.spacing))
        sources, _, _, interval = series_sources(item.ordered, config)
        out.append(PreparedSeries(where if position is None else f"{where}#position{position}",
                                  deid.keyed_hash(key, "series", deid.record_source(item.source, position)),
                                  item.prepared, facts, sources, interval))
    return out


def frame_answer(scores: np.ndarray, valid: int, series: PreparedSeries, events: tuple[str, ...]) -> dict[str, Any]:
    """A frames model's answer for one series: its valid frames' scores and the events
    read back from them, in source frames (model/events.py)."""
    sources = series.sources if series.sources is not None else np.arange(len(scores), dtype=np.float32)
    found = {name: tuple(float(x) for x in to_source(turning_points(scores[:valid], kind == 0), sources[:valid]))
             for kind, name in enumerate(events)}
    return {"frame_values": tuple(float(v) for v in scores[:valid]), "events": found,
            "interval_ms": series.interval_ms}


def as_columns(run: Predict) -> Predict:
    """`run` with a value model's (B,) outputs as (B, 1): one column, as one class's."""
    return lambda frames, valid: np.asarray(run(frames, valid)).reshape(len(valid), -1)


def frame_importance(run: Predict, prepared: Prepared, target: int) -> tuple[float, ...]:
    """Temporal occlusion: each valid frame is taken out of the sequence in turn (the
    later ones move up, the mask shrinks by one); its importance is how much the
    probability of `target` drops without it. `run`: frames, valid_frames -> probabilities."""
    frames, valid = prepared.frames, prepared.valid_frames
    if valid < 2:
        return (0.0,) * valid
    occluded = np.stack([np.concatenate([np.delete(frames[:valid], t, axis=0), frames[valid - 1:]], axis=0)
                         for t in range(valid)])
    p_full = float(run(frames[None], np.array([valid], np.int32))[0, target])
    without = run(occluded, np.full(valid, valid - 1, np.int32))
    return tuple(float(p_full - p) for p in without[:, target])


def predict(model_dir: str | Path, root: str | Path, explain: bool = False,
            outside_domain: str = "refuse", key: bytes | None = None) -> list[Prediction]:
    """Predictions for every series under `root`, in folder order, by a SavedModel or by a
    LiteRT or ONNX artifact of `medseq export` (no Grad-CAM there: it needs gradients).
    `key`: the keyed hashes' key (the records' own gives their series keys), else
    MEDSEQ_HASH_KEY, else a key of this run.
    A series outside the model's training domain (a modality, frame axis or colour it was
    never trained on) is rejected as `outside_domain`, or with `outside_domain="warn"`
    predicted and flagged; unusual values are flagged either way."""
    if outside_domain not in OUTSIDE_DOMAIN_POLICIES:
        raise InputError(f"--outside-domain: expected one of {', '.join(OUTSIDE_DOMAIN_POLICIES)}, "
                         f"found {outside_domain!r}")
    import tensorflow as tf

    from ..io.examples import load_spec, load_spec_json
    from ..model import runtimes

    spec = load_spec(model_dir)
    config = from_dict(PreprocessConfig, spec.preprocess, "model preprocess")
    # The model's own ingest.pixel_phi (a model from before it: the safe defaults).
    phi = from_dict(PixelPhiConfig, spec.pixel_phi.get("policy", {}), "model pixel_phi")
    limits = InputLimits.from_record(spec.input_limits)  # the model's own ingest bounds
    spatial = scorer = None
    if runtimes.artifact_format(model_dir):
        run = runtimes.load(model_dir)  # LiteRT and ONNX artifacts carry no domain score (their card says so)
    else:
        signatures = tf.saved_model.load(str(model_dir)).signatures
        run = runtimes.signature(signatures[F.FRAMES_SIGNATURE])
        spatial = signatures.get(F.EXPLAIN_SIGNATURE) if explain else None  # absent in models before it
        if F.DOMAIN_SCORE in signatures[F.FRAMES_SIGNATURE].structured_outputs:
            scorer = signatures[F.FRAMES_SIGNATURE]
    results = []
    training = load_spec_json(model_dir).get("training", {})
    domain = training.get("domain")  # absent in models before it
    anomaly = training.get("anomaly")  # an anomaly model's normal class and threshold
    if spec.is_anomaly and not anomaly:
        raise InputError(f"{model_dir}: an anomaly model without its threshold (expected training.anomaly "
                         "in its spec, as medseq train writes it)")
    for series in prepare_folder(root, config, key=key, phi=phi, limits=limits):
        item = series.item
        found = findings(domain, series.facts) if domain and series.facts is not None else None
        if found is not None and found.hard and outside_domain == "refuse":
            item = Rejected(OUTSIDE_DOMAIN, f"outside the model's training domain: {'; '.join(found.hard)} "
                            "(--outside-domain warn predicts it anyway)")
        if isinstance(item, Rejected):
            results.append(Prediction(series.where, series.series_key, None, {}, item.code, item.message))
            continue
        score = None
        if scorer is not None:  # one call: probabilities (or the value) and score
            out = scorer(frames=tf.constant(item.frames[None]), valid_frames=tf.constant([item.valid_frames]))
            probs = np.atleast_1d(np.asarray(out[spec.output].numpy()[0], np.float64))
            score = float(out[F.DOMAIN_SCORE].numpy()[0])
        else:
            probs = np.atleast_1d(run(item.frames[None], np.array([item.valid_frames], np.int32))[0])
        flags = (*found.hard, *found.soft) if found is not None else ()
        if domain and score is not None and (flag := score_finding(domain, score)) is not None:
            flags = (*flags, flag)
        target = int(np.argmax(probs))
        importance = frame_importance(as_columns(run), item, target) if explain and not spec.is_frames else ()
        attribution = None
        if spatial is not None:
            attribution = spatial(frames=tf.constant(item.frames[None]),
                                  valid_frames=tf.constant([item.valid_frames]))[F.ATTRIBUTION].numpy()[0]
        answer: dict[str, Any] = {"value": float(probs[0]), "units": spec.units} if spec.is_value else {}
        if spec.is_frames:
            answer = frame_answer(probs, item.valid_frames, series, spec.classes)
        label = None  # a value or frames model answers without one
        if spec.is_anomaly:
            answer = {"anomaly_score": float(probs[0])}
            label = ANOMALOUS if probs[0] > anomaly["threshold"] else str(anomaly["normal"])
        elif not (spec.is_value or spec.is_frames):
            label = spec.classes[target]
        by_class = label is not None and not spec.is_anomaly
        results.append(Prediction(series.where, series.series_key, label,
                                  {c: float(p) for c, p in zip(spec.classes, probs, strict=True)} if by_class else {},
                                  domain=flags, domain_score=score,
                                  frame_importance=importance, attribution=attribution,
                                  frames=item.frames if attribution is not None else None, **answer))
    return results
