"""The parity gate: an artifact is written only if, under its own runtime, it gives the
SavedModel's probabilities on the eval split.

Checks, each against the SavedModel's `predict_frames` on the same inputs:
- `eval_batch_8`: every eval record, in batches of 8 (the last one smaller);
- `batch_1`: the first 16 records one at a time;
- `short_sequences`: those 16 with fewer valid frames (1, and half of theirs), the frames
  beyond them zeroed as a shorter series' padding is, in batches of 8.

It passes when the largest |Δp| over all of them (for a value target |Δ| in the train
split's standard deviations, for frames |Δscore|; each line names which) is within the
precision's tolerance and the eval AUC (macro AUC for three or more classes; R² for a
value; minus the event error for frames) changes by at least the configured minimum
(the `export` section); the change's paired bootstrap interval, at the configured
level, is reported beside it.

A causal model's step artifact (model/step.py) passes when stepping the first 16 eval
series frame by frame, all 16 as one batch of streams and the first alone, gives the
SavedModel's whole-sequence score at every valid frame within the same tolerance
(`check_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...pipeline.config import ExportConfig
from ...pipeline.errors import InputError
from ..io.examples import RecordSpec, eval_dataset, split_files
from ..model.events import series_table, table_metrics
from ..model.intervals import LOWER_IS_BETTER, bootstrap, headline_metric, metrics_of, percent
from ..model.runtimes import Predict, Step
from ..model.step import StateTensor, step_through

BATCH = 8
FEW = 16


@dataclass(frozen=True)
class EvalSplit:
    frames: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    scale: float = 1.0  # a value target's train standard deviation: |Δ| is compared in it, as a probability's
    difference: str = "|Δp|"  # what |Δ| is of, in the gate's words: probabilities, values in SDs, frame scores

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Parity:
    precision: str
    series: int
    tolerance: float
    max_abs_diff: float
    checks: dict[str, float]  # check -> its max |Δp|
    auc_metric: str
    auc_reference: float
    auc: float
    auc_change_interval: tuple[float, float]
    level: float
    min_change: float
    failures: tuple[str, ...]
    difference: str = "|Δp|"

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def auc_change(self) -> float:
        return self.auc - self.auc_reference

    def to_json(self) -> dict[str, object]:
        return {"split": "eval", "series": self.series, "tolerance": self.tolerance,
                "max_abs_diff": self.max_abs_diff, "checks": self.checks, "metric": self.auc_metric,
                "reference": self.auc_reference, "artifact": self.auc, "change": self.auc_change,
                "change_interval": list(self.auc_change_interval), "confidence_level": self.level,
                "min_change": self.min_change, "passed": self.passed}

    def figures(self) -> str:
        """The gate's numbers in one clause, the interval at its configured level."""
        low, high = self.auc_change_interval
        return (f"max {self.difference} {self.max_abs_diff:.1e} (tolerance {self.tolerance:.0e}), {self.auc_metric} "
                f"{self.auc:.4f} vs {self.auc_reference:.4f} (change {self.auc_change:+.4f}, {percent(self.level)} "
                f"[{low:+.4f}, {high:+.4f}]) on {self.series} series")


def eval_split(examples_dir: str | Path, spec: RecordSpec) -> EvalSplit:
    files = split_files(examples_dir, "eval")
    if not files:
        raise InputError(f"{examples_dir}/eval: expected the eval records the parity gate runs on, found none")
    frames, valid, labels = [], [], []
    for inputs, label in eval_dataset(files, spec, 64).as_numpy_iterator():
        frames.append(inputs["frames"])
        valid.append(inputs["valid_frames"])
        labels.append(label)
    difference = "|Δ| (train SDs)" if spec.is_value else "|Δscore|" if spec.is_frames else "|Δp|"
    return EvalSplit(np.concatenate(frames), np.concatenate(valid).astype(np.int32), np.concatenate(labels),
                     spec.value_std if spec.is_value else 1.0, difference)


def batched(run: Predict, frames: np.ndarray, valid: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([run(frames[i:i + batch], valid[i:i + batch]) for i in range(0, len(valid), batch)])


def shortened(frames: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each series cut to 1 frame and to half its frames, zero padding beyond."""
    cuts = np.concatenate([np.ones_like(valid), np.maximum(1, (valid + 1) // 2)]).astype(np.int32)
    out = np.concatenate([frames, frames])
    for i, cut in enumerate(cuts):
        out[i, cut:] = 0
    return out, cuts


def _score(probs: np.ndarray, labels: np.ndarray) -> tuple[str, float]:
    """The eval metric the gate holds: AUC (macro for 3+ classes), R² for a value, the
    event error for frames, signed so that higher is better (an error counts negative)."""
    name = headline_metric(probs, labels)
    value = float(metrics_of(probs, labels)[name])
    return name, -value if name in LOWER_IS_BETTER else value


def change_interval(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray,
                    settings: ExportConfig) -> tuple[float, float]:
    """The interval of the AUC change over series resampled together (paired); for frames,
    of the event error's fall (each series' events found once)."""
    if labels.ndim == 3:
        ref, got = series_table(reference, labels), series_table(candidate, labels)

        def statistics(pick: np.ndarray) -> dict[str, float]:
            return {"change": table_metrics(ref[pick])["event_error"] - table_metrics(got[pick])["event_error"]}
    else:
        def statistics(pick: np.ndarray) -> dict[str, float]:
            return {"change": _score(candidate[pick], labels[pick])[1] - _score(reference[pick], labels[pick])[1]}
    change = bootstrap(statistics, len(labels), settings.seed, settings.bootstrap_samples, settings.confidence_level)
    return change.get("change", (float("nan"), float("nan")))


def check(reference: Predict, candidate: Predict, split: EvalSplit, precision: str,
          settings: ExportConfig) -> Parity:
    few = slice(0, min(FEW, len(split)))
    short_frames, short_valid = shortened(split.frames[few], split.valid[few])
    ref = batched(reference, split.frames, split.valid, 32)
    got = batched(candidate, split.frames, split.valid, BATCH)
    checks = {
        "eval_batch_8": float(np.abs(got - ref).max()) / split.scale,
        "batch_1": float(np.abs(batched(candidate, split.frames[few], split.valid[few], 1) - ref[few]).max())
        / split.scale,
        "short_sequences": float(np.abs(batched(candidate, short_frames, short_valid, BATCH)
                                        - batched(reference, short_frames, short_valid, 32)).max()) / split.scale,
    }
    worst = max(checks.values())
    metric, auc_ref = _score(ref, split.labels)  # an error as its negative: higher is better for every metric
    auc = _score(got, split.labels)[1]
    if metric in LOWER_IS_BETTER:
        metric = f"-{metric}"
    tolerance, least = settings.tolerance[precision], settings.min_auc_change
    failures = []
    if not worst <= tolerance:
        failures.append(f"max {split.difference} {worst:.2e} above the {precision} tolerance {tolerance:.0e}")
    if np.isfinite(auc_ref) and not auc - auc_ref >= least:
        failures.append(f"eval {metric} {auc:.4f} against {auc_ref:.4f}, a change below {least}")
    return Parity(precision, len(split), tolerance, worst, checks, metric, auc_ref, auc,
                  change_interval(ref, got, split.labels, settings), settings.confidence_level, least, tuple(failures),
                  split.difference)


@dataclass(frozen=True)
class StepParity:
    precision: str
    series: int
    frames: int  # valid frames compared
    tolerance: float
    max_abs_diff: float
    checks: dict[str, float]

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    @property
    def failures(self) -> tuple[str, ...]:
        return () if self.passed else (f"stepped frame by frame, max |Δscore| {self.max_abs_diff:.2e} from the "
                                       f"whole-sequence model, above the {self.precision} tolerance "
                                       f"{self.tolerance:.0e}",)

    def to_json(self) -> dict[str, object]:
        return {"split": "eval", "series": self.series, "frames": self.frames, "tolerance": self.tolerance,
                "max_abs_diff": self.max_abs_diff, "checks": self.checks, "passed": self.passed,
                "against": "the SavedModel's predict_frames on the whole sequence, at every valid frame"}

    def figures(self) -> str:
        return (f"stepped max |Δscore| {self.max_abs_diff:.1e} (tolerance {self.tolerance:.0e}) over "
                f"{self.frames} frames of {self.series} series")


def check_step(reference: Predict, candidate: Step, states: tuple[StateTensor, ...], split: EvalSplit,
               precision: str, settings: ExportConfig) -> StepParity:
    """The step `candidate` against the whole-sequence `reference` (see the module's text)."""
    few = slice(0, min(FEW, len(split)))
    frames, valid = split.frames[few], split.valid[few]
    whole = batched(reference, frames, valid, 32)
    checks = {"streams_batch": float(np.abs(step_through(candidate, frames, valid, states) - whole).max()),
              "stream_1": float(np.abs(step_through(candidate, frames[:1], valid[:1], states) - whole[:1]).max())}
    return StepParity(precision, len(valid), int(valid.sum()), settings.tolerance[precision], max(checks.values()),
                      checks)
