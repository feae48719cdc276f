"""Events read back from a per-frame phase score, and how far they lie from the truth.

A model of `train.target: frames` answers a phase score per frame: 1 at events[0]
(end-diastole), 0 at events[1] (end-systole). An event is a turning point of the score:
a maximum for events[0], a minimum for events[1], kept when it stands out by at least
PROMINENCE from the score around it (as scipy's `find_peaks` measures prominence), and
placed between frames by the parabola through it and its neighbours. A turning point at
the first or last frame counts (the clip may start or end at an event).

The event error of a series is the average absolute frame difference of EchoPhaseDetection
made symmetric: over its key frames, the distance in source frames (in ms with the series'
frame interval) to the nearest detected event of the same kind, and over the events
detected inside its labeled span (frames with a weight, where every event is labeled),
the distance to the nearest key frame of their kind. A spurious event costs as much as a
missed one. A key frame with no event of its kind detected is charged the distance to
the middle of the clip, as a guess without the model would be. A split's error is the
mean over its series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROMINENCE = 0.25  # of the score's 0..1 range

# The channels of a frames target's truth tensor (examples.frame_truth): per output frame.
SCORE, WEIGHT, KEY_EVENT, KEY_SOURCE, SOURCE, INTERVAL = range(6)
TRUTH_CHANNELS = 6


def turning_points(score: np.ndarray, maximum: bool) -> np.ndarray:
    """Output frames (fractional) of the maxima (or minima) of `score` (its valid frames)."""
    s = np.asarray(score, np.float64) * (1.0 if maximum else -1.0)
    n = len(s)
    if n < 2:
        return np.zeros(0)
    padded = np.concatenate([[s[1]], s, [s[-2]]])  # reflected: an edge frame may be a turning point
    found = []
    for t in range(n):
        before, here, after = padded[t], padded[t + 1], padded[t + 2]
        if not (here >= before and here > after) and not (here > before and here >= after):
            continue
        j = t
        while j > 0 and s[j - 1] <= here:
            j -= 1
        k = t
        while k < n - 1 and s[k + 1] <= here:
            k += 1
        left, right = s[j:t + 1].min(), s[t:k + 1].min()  # the lowest points before a higher one
        # A side that runs to the clip's edge without a higher point is unknown: the
        # clip was cut there, and the beat goes on beyond it.
        left_open, right_open = j == 0 and s[0] <= here, k == n - 1 and s[-1] <= here
        if left_open != right_open:
            base = right if left_open else left
        else:
            base = min(left, right) if left_open else max(left, right)
        if here - base < PROMINENCE:
            continue
        offset = 0.0
        if 0 < t < n - 1:
            curve = s[t - 1] - 2.0 * s[t] + s[t + 1]
            offset = float(np.clip(0.5 * (s[t - 1] - s[t + 1]) / curve, -0.5, 0.5)) if curve < 0 else 0.0
        found.append(t + offset)
    return np.asarray(found, np.float64)


def to_source(frames: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Fractional output frames -> source frames, between the sources of the frames around them."""
    valid = sources[sources >= 0]
    return np.interp(frames, np.arange(len(valid)), valid) if len(valid) else frames


@dataclass(frozen=True)
class SeriesEvents:
    """One series' detected events and its key frames' errors."""

    detected: tuple[np.ndarray, ...]  # per event kind: source frames of the events found
    errors: np.ndarray  # |source frame difference| per key frame, then per event detected in the labeled span
    kinds: np.ndarray  # the event kind of each error
    missed: int  # key frames with no event of their kind detected
    keys: int  # key frames (the first `keys` errors)
    interval_ms: float

    @property
    def error(self) -> float:
        return float(self.errors.mean()) if len(self.errors) else float("nan")


def series_events(score: np.ndarray, truth: np.ndarray) -> SeriesEvents:
    """`score` (T,) and `truth` (T, TRUTH_CHANNELS) of one series -> its events."""
    valid = int(np.sum(truth[:, SOURCE] >= 0))
    sources = truth[:valid, SOURCE]
    turning = [turning_points(score[:valid], kind == 0) for kind in (0, 1)]
    detected = tuple(to_source(t, sources) for t in turning)
    keys = np.flatnonzero(truth[:, KEY_EVENT] > 0)
    key_kinds = (truth[keys, KEY_EVENT] - 1).astype(np.int64)
    true = [truth[keys[key_kinds == kind], KEY_SOURCE] for kind in (0, 1)]  # source frames of the key frames
    kinds = list(key_kinds)
    errors, missed = [], 0
    middle = float(sources[-1]) / 2.0 if valid else 0.0
    for key, kind in zip(keys, kinds, strict=True):
        at = float(truth[key, KEY_SOURCE])
        if len(detected[kind]):
            errors.append(float(np.min(np.abs(detected[kind] - at))))
        else:
            errors.append(abs(middle - at))
            missed += 1
    labeled = truth[:valid, WEIGHT] > 0
    for kind in (0, 1):
        for frame, at in zip(turning[kind], detected[kind], strict=True):
            if labeled[int(round(frame))] and len(true[kind]):
                errors.append(float(np.min(np.abs(true[kind] - at))))
                kinds.append(kind)
    return SeriesEvents(detected, np.asarray(errors), np.asarray(kinds, np.int64), missed,
                        len(keys), float(truth[0, INTERVAL]))


# The columns of `series_table`: one row of numbers per series, from which every metric
# of a split (and of each bootstrap resample of its series) is a sum or a mean.
TABLE = ("event_error", "event_error_ms", "frame_error_sum", "frame_weight", "missed", "key_frames",
         "event_error_0", "event_error_1")


def series_table(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, len(TABLE)) from (N, T) scores and (N, T, TRUTH_CHANNELS) truth: each series'
    event error in source frames and in ms (NaN without timing), the sum of its score's
    absolute errors over its weighted frames and their weight, its key frames missed
    and counted, its error per event kind (NaN without a key frame of that kind)."""
    rows = []
    for score, t in zip(scores, truth, strict=True):
        found = series_events(score, t)
        w = t[:, WEIGHT]
        per_kind = [float(found.errors[found.kinds == k].mean()) if np.any(found.kinds == k) else np.nan
                    for k in (0, 1)]
        rows.append((found.error, found.error * found.interval_ms if found.interval_ms > 0 else np.nan,
                     float(np.sum(np.abs(score - t[:, SCORE]) * w)), float(w.sum()), found.missed,
                     found.keys, *per_kind))
    return np.asarray(rows, np.float64).reshape(-1, len(TABLE))


def _mean(column: np.ndarray) -> float:
    finite = column[np.isfinite(column)]
    return float(finite.mean()) if len(finite) else float("nan")


def table_metrics(table: np.ndarray) -> dict[str, float]:
    """A split's metrics from its `series_table`: the phase score's error over the weighted
    frames (frame_mae), the event error in source frames and ms (means over series), per
    event kind (event_error_0: events[0]), and the share of key frames missed."""
    if len(table) == 0:
        return {}
    c = {name: table[:, i] for i, name in enumerate(TABLE)}
    return {"event_error": _mean(c["event_error"]), "event_error_ms": _mean(c["event_error_ms"]),
            "event_error_0": _mean(c["event_error_0"]), "event_error_1": _mean(c["event_error_1"]),
            "frame_mae": float(c["frame_error_sum"].sum() / max(float(c["frame_weight"].sum()), 1.0)),
            "events_missed": float(c["missed"].sum() / max(float(c["key_frames"].sum()), 1.0))}


def frame_metrics(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """A split's metrics (`table_metrics`) from (N, T) scores and their truth."""
    return table_metrics(series_table(scores, truth))


# What TFMA reads of each series (evaluate/materialized.py): the first columns of `TABLE`,
# so that its per-slice numbers are `table_metrics`' own (a mean over series, or the
# pooled frame MAE: the sum of the errors over the sum of the weights).
SUMMARY = TABLE[:4]


def series_summary(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, len(SUMMARY)) per series: event error in source frames, in ms, the sum of the
    phase score's absolute errors over its weighted frames, and their weight."""
    return series_table(scores, truth)[:, :len(SUMMARY)]
