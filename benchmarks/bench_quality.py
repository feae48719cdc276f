"""Does the model read the sequence? Held-out quality of the shipped pipeline, against
the same pipeline shown one frame per series, side by side in one run.

    python benchmarks/bench_quality.py [--patients 1000] [--ct-patients 300] [--epochs 30] [--split 0.5 0.1 0.4]
        [--only anomaly cine ct dce phase sax value] [--dce-patients 300] [--sax-patients 300] [--depth 8]
        [--min-drop 0.1]
        [--value-patients 1000] [--noise 3] [--value-frames 32] [--value-full]
        [--value-train KEY=VALUE ...] [--phase-patients 600] [--anomaly-patients 600] [--abnormal-share 0.1]

cine_ef (synthetic short-axis cine, `medseq synth --small`), converted and trained with
the shipped config; AUC on the test split (patients never used for training or for
picking the epoch) with a bootstrap 95 % interval over series:
- the sequence model (goal: AUC >= 0.95), and the same model with its frames shuffled;
- the temporal control: the same pipeline trained and tested on one frame per series,
  the end-diastolic (first) frame, the end-systolic (smallest blood pool) frame and a
  random one (goal: AUC <= 0.65 each: no single frame tells the ejection fraction);
- the Bayes-optimal AUC of one frame from the phantom's exact cavity radius, the bound
  the synthetic task puts on any single-frame model;
- ct_nodule with the shipped config (goal: AUC >= 0.90), and with uniform slice
  picking instead of thick-slab averaging (`preprocess.stack: sample`);
- dce_kinetics (4-D, one record per slice position, every phase kept: T = 12, `temporal:
  pad`): the sequence model (goal >= 0.95), the same with frames shuffled at test and an
  order-blind model (frame features mean-pooled, no frame differences; goals <= 0.60),
  each through `medseq evaluate` with `evaluate.temporal_min_drop` (goal: the order-blind
  model refused, the sequence model blessed);
- cine_sax under `preprocess.four_d: per_position` and `volumes`, side by side, per
  record and per patient (goal >= 0.95);
- cine_ef as a value (`medseq synth --target value --noise 3`, `train.target: value`):
  the ejection fraction in % with 3 EF points of measurement noise, so a perfect fit is
  impossible (goals: MAE <= 3.0 EF points, R² >= 0.85), the same model with its frames
  shuffled and with one frame repeated at test (clearly worse);
- cine_phase as events per frame (`medseq synth --task cine_phase`, `train.target:
  frames`): clips of 1.3-2.4 beats from any start phase where only the ED and ES frames
  are labeled, every source frame kept (T = 40, `temporal: pad`): the event error in
  source frames (goal: <= 1.0 for ED and for ES), the same model with its frames
  shuffled at test (far worse), and the causal model (`train.causal`, goal: within 0.2
  frames of the non-causal one);
- anomaly detection from normal series (`train.target: anomaly`): cine_ef where reduced
  EF is rare (10 % of the series), a model trained on the normal series alone (it
  predicts each next frame); the AUC of its `anomaly_score` of normal against reduced EF
  on the test split, its sensitivity and false-alarm rate at the threshold the model
  carries, beside the same model's `domain_score` (the embedding distance) and its score
  with the frames shuffled at test.
Prints a table and writes JSON (benchmarks/results/bench_quality.json; the rows of the
sections not run are kept from the earlier run).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml

from medseq.components import evaluate, ingest, synth, train
from medseq.components.evaluate.inference import repeat_one_frame, shuffle_frames
from medseq.components.io.examples import eval_dataset, record_spec, split_files
from medseq.components.model.events import frame_metrics
from medseq.components.model.intervals import bootstrap_intervals, value_metrics
from medseq.components.model.metrics import auc, binary_auc
from medseq.components.synth import phantoms
from medseq.components.synth.tasks import EF_RANGES
from medseq.pipeline import features as F
from medseq.pipeline.config import EvaluateConfig, PipelineConfig, ValueConfig, load_config

RESULTS = Path(__file__).resolve().parent / "results" / "bench_quality.json"
KEY = b"benchmark-key-0123456789"
Picker = Callable[[np.ndarray, int], int]


def convert(task: str, patients: int, seed: int, tmp: Path, config: PipelineConfig, tag: str = "") -> Path:
    data, records = tmp / f"{task}-data", tmp / f"{task}-records-{tag or config.preprocess.stack}"
    if not (data / "labels.csv").exists():
        synth.run(task, patients, seed, data, small=True)
    ingest.run(config, ingest.IngestInputs(str(data / "dicom"), str(data / "labels.csv"), KEY), records)
    return records


def predictions(model_dir: str, records: Path, split: str = "test",
                shuffle: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    signature = tf.saved_model.load(model_dir).signatures[F.FRAMES_SIGNATURE]
    probs, labels = [], []
    for inputs, y in eval_dataset(split_files(records, split), record_spec(records), 32):
        frames = inputs[F.FRAMES].numpy()
        if shuffle is not None:  # a fresh order of the valid frames of every series
            frames = shuffle_frames(frames, inputs[F.VALID_FRAMES].numpy(), shuffle)
        probs.append(signature(frames=tf.constant(frames), valid_frames=inputs[F.VALID_FRAMES])[F.PROBABILITIES]
                     .numpy())
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def scored(name: str, probs: np.ndarray, labels: np.ndarray, **extra: object) -> dict[str, object]:
    low, high = bootstrap_intervals(probs, labels, seed=0, samples=2000, metrics=lambda p, y: {"auc": auc(p, y)})["auc"]
    return {"model": name, "auc": auc(probs, labels), "ci95": [low, high], "series": int(len(labels)), **extra}


def trained(records: Path, out: Path, config: PipelineConfig) -> tuple[str, float]:
    start = time.perf_counter()
    result = train.train(records, out, config.train)
    return result.model_dir, time.perf_counter() - start


def end_systole(frames: np.ndarray, valid: int) -> int:
    """The frame whose blood pool (the brightest pixels) is smallest."""
    bright = frames[:valid] > 0.5 * np.percentile(frames[:valid], 99.5)
    return int(np.argmin(bright.reshape(valid, -1).sum(1)))


def one_frame_records(records: Path, out: Path, pick: Picker) -> Path:
    """The records with only the frame `pick(frames, valid_frames)` of each series (T=1)."""
    spec = record_spec(records)
    for split in F.SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(out / split / f"{split}-00000-of-00001.tfrecord.gz"), "GZIP") as writer:
            for raw in tf.data.TFRecordDataset(split_files(records, split), compression_type="GZIP"):
                example = tf.train.Example.FromString(raw.numpy())
                feature = example.features.feature
                frames = np.frombuffer(feature[F.FRAMES].bytes_list.value[0], spec.dtype).reshape(spec.shape)
                k = pick(frames, int(feature[F.VALID_FRAMES].int64_list.value[0]))
                feature[F.FRAMES].bytes_list.value[0] = frames[k:k + 1].tobytes()
                feature[F.FRAMES_SHAPE].int64_list.value[0] = 1
                feature[F.VALID_FRAMES].int64_list.value[0] = 1
                writer.write(example.SerializeToString())
    qc = json.loads((records / F.QC_FILE).read_text())
    qc["config"]["preprocess"]["frames"] = 1
    (out / F.QC_FILE).write_text(json.dumps(qc))
    return out


def single_frame_bayes_auc(samples: int = 200_000, seed: int = 0) -> dict[str, float]:
    """AUC of the best possible classifier of one frame's exact cavity radius in pixels
    (a likelihood ratio over a fine histogram), drawn as phantoms.cine_frames draws it."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        reduced = rng.random(n) < 0.5
        (r_lo, r_hi), (n_lo, n_hi) = EF_RANGES["cine_ef"]["reduced_ef"], EF_RANGES["cine_ef"]["normal"]
        ef = np.where(reduced, rng.uniform(r_lo, r_hi, n), rng.uniform(n_lo, n_hi, n))
        cavity = np.exp(rng.uniform(*np.log(phantoms.CAVITY_MM), n))
        anchor = rng.uniform(*phantoms.ANCHOR, n)
        ed = cavity * (1 - ef) ** (-anchor / 2)
        es = ed * np.sqrt(1 - ef)
        pixel = rng.uniform(*phantoms.FOV_MM, n) / 64
        systole = rng.uniform(0.3, 0.4, n)
        phase = rng.random(n)
        shape = np.where(phase < systole, 0.5 - 0.5 * np.cos(np.pi * phase / systole),
                         0.5 + 0.5 * np.cos(np.pi * (phase - systole) / (1 - systole)))
        return reduced, {"end-diastolic": np.log(ed / pixel), "end-systolic": np.log(es / pixel),
                         "random": np.log((ed - (ed - es) * shape) / pixel)}

    y_fit, fit = draw(samples)
    y_test, test = draw(samples // 10)
    found = {}
    for frame in fit:
        edges = np.quantile(fit[frame], np.linspace(0, 1, 41))
        bins = np.clip(np.searchsorted(edges, fit[frame]) - 1, 0, 39)
        ratio = (np.bincount(bins[y_fit], minlength=40) + 1) / (np.bincount(bins[~y_fit], minlength=40) + 1)
        found[frame] = binary_auc(ratio[np.clip(np.searchsorted(edges, test[frame]) - 1, 0, 39)], y_test)
    return found


def cine(args: argparse.Namespace, tmp: Path, config: PipelineConfig) -> list[dict[str, object]]:
    records = convert("cine_ef", args.patients, args.seed, tmp, config)
    model, seconds = trained(records, tmp / "cine-train", config)
    probs, labels = predictions(model, records)
    rows = [scored("sequence (T=16)", probs, labels, train_seconds=round(seconds))]
    rows.append(scored("sequence, frames shuffled at test", *predictions(model, records,
                                                                          shuffle=np.random.default_rng(1))))
    rng = np.random.default_rng(2)
    pickers: dict[str, Picker] = {"end-diastolic": lambda f, n: 0, "end-systolic": end_systole,
                                  "random": lambda f, n: int(rng.integers(n))}
    for name, pick in pickers.items():
        one = one_frame_records(records, tmp / f"one-{name}", pick)
        model, seconds = trained(one, tmp / f"train-one-{name}", config)
        rows.append(scored(f"one {name} frame (T=1)", *predictions(model, one), train_seconds=round(seconds)))
    for frame, value in single_frame_bayes_auc().items():
        rows.append({"model": f"Bayes-optimal, one {frame} frame (phantom radius)", "auc": value, "ci95": None,
                     "series": None})
    return rows


def ct(args: argparse.Namespace, tmp: Path, config: PipelineConfig) -> list[dict[str, object]]:
    rows = []
    for stack in ("average", "sample"):
        variant = with_preprocess(config, stack=stack)
        records = convert("ct_nodule", args.ct_patients, args.seed, tmp, variant)
        model, seconds = trained(records, tmp / f"ct-train-{stack}", variant)
        rows.append(scored(f"ct_nodule, stack: {stack}", *predictions(model, records), train_seconds=round(seconds)))
        shutil.rmtree(records)
    return rows


def with_preprocess(config: PipelineConfig, **changes: object) -> PipelineConfig:
    return dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, **changes))


def with_train(config: PipelineConfig, **changes: object) -> PipelineConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def temporal_gate(records: Path, model: str, out: Path, min_drop: float) -> dict[str, object]:
    """`medseq evaluate` of `model` with `evaluate.temporal_min_drop`: its verdict and the temporal check."""
    settings = EvaluateConfig(temporal_min_drop=min_drop, bootstrap_samples=1000)
    result = evaluate.evaluate(str(records), model, out, settings=settings)
    [check] = [c for c in result.checks if "one frame repeated" in c.metric]
    return {"decision": F.BLESSED if result.blessed else F.NOT_BLESSED, "temporal_check_passed": check.passed,
            "auc_drop_one_frame": round(float(check.found or 0.0), 4), "reasons": list(result.reasons)}


def dce(args: argparse.Namespace, tmp: Path, config: PipelineConfig) -> list[dict[str, object]]:
    """dce_kinetics: every phase kept (T = 12, `temporal: pad`), one record per slice position;
    the sequence model, the same shuffled at test, and the order-blind control (mean-pooled
    frame features, no frame differences); each through evaluate's temporal gate."""
    config = with_preprocess(config, frames=12, temporal="pad")
    records = convert("dce_kinetics", args.dce_patients, args.seed, tmp, config)
    rows = []
    for name, variant in (("sequence (LSTM)", config),
                          ("order-blind (mean-pooled frames)",
                           with_train(config, sequence_model="mean_pool", frame_difference=False))):
        model, seconds = trained(records, tmp / f"dce-train-{variant.train.sequence_model}", variant)
        gated = temporal_gate(records, model, tmp / f"dce-eval-{variant.train.sequence_model}", args.min_drop)
        rows.append(scored(f"dce_kinetics, {name}", *predictions(model, records), train_seconds=round(seconds),
                           evaluate=gated))
        if variant is config:
            rows.append(scored("dce_kinetics, sequence, frames shuffled at test",
                               *predictions(model, records, shuffle=np.random.default_rng(1))))
    return rows


def per_patient(probs: np.ndarray, labels: np.ndarray, patients: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The mean probability of each patient's records (a cine_sax patient has one study, one label)."""
    keys = sorted(set(patients))
    index = {k: i for i, k in enumerate(keys)}
    rows = np.array([index[p] for p in patients])
    total = np.zeros((len(keys), probs.shape[1]))
    np.add.at(total, rows, probs)
    counts = np.bincount(rows, minlength=len(keys))[:, None]
    label = np.zeros(len(keys), np.int64)
    label[rows] = labels
    return total / counts, label


def patient_keys(records: Path, split: str = "test") -> list[str]:
    return [tf.train.Example.FromString(raw.numpy()).features.feature[F.PATIENT_KEY].bytes_list.value[0].decode()
            for raw in tf.data.TFRecordDataset(split_files(records, split), compression_type="GZIP")]


def sax(args: argparse.Namespace, tmp: Path, config: PipelineConfig) -> list[dict[str, object]]:
    """cine_sax under `four_d: per_position` (the default) and `volumes`, side by side: AUC
    per record and per patient (the mean of the patient's records)."""
    rows = []
    for four_d in ("per_position", "volumes"):
        variant = with_preprocess(config, four_d=four_d, depth=args.depth)
        records = convert("cine_sax", args.sax_patients, args.seed, tmp, variant, tag=four_d)
        model, seconds = trained(records, tmp / f"sax-train-{four_d}", variant)
        probs, labels = predictions(model, records)
        rows.append(scored(f"cine_sax, four_d: {four_d}, per record", probs, labels, train_seconds=round(seconds)))
        rows.append(scored(f"cine_sax, four_d: {four_d}, per patient",
                           *per_patient(probs, labels, patient_keys(records))))
        shutil.rmtree(records)
    return rows


def test_outputs(model_dir: str, records: Path, output: str, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A model's `output` (a value, or a frames model's scores) on the test split, on the
    records, or `shuffled`, or with `one_frame` repeated; and the truth."""
    signature = tf.saved_model.load(model_dir).signatures[F.FRAMES_SIGNATURE]
    rng, outputs, truth = np.random.default_rng(1), [], []
    for inputs, y in eval_dataset(split_files(records, "test"), record_spec(records), 32):
        frames, valid = inputs[F.FRAMES].numpy(), inputs[F.VALID_FRAMES].numpy()
        if variant == "shuffled":
            frames = shuffle_frames(frames, valid, rng)
        elif variant == "one_frame":
            frames = repeat_one_frame(frames, valid)
        outputs.append(signature(frames=tf.constant(frames), valid_frames=inputs[F.VALID_FRAMES])[output].numpy())
        truth.append(y.numpy())
    return np.concatenate(outputs).astype(np.float64), np.concatenate(truth).astype(np.float64)


def value(args: argparse.Namespace, tmp: Path, config: PipelineConfig) -> list[dict[str, object]]:
    data, records = tmp / "cine_ef-value-data", tmp / "cine_ef-value-records"
    synth.run("cine_ef", args.value_patients, args.seed, data, small=not args.value_full, target="value",
              noise=args.noise)
    config = with_train(config, target="value", value=ValueConfig(column="ef", units="%", range=(0.0, 100.0)))
    if args.value_frames:  # every frame of the 16-30 kept: the end-systolic one is never skipped
        config = with_preprocess(config, frames=args.value_frames, temporal="pad")
    if args.value_train:  # e.g. lstm_units=64 conv_filters=[16,32,64]: one model variant
        changes = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.value_train)}
        config = with_train(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})
    ingest.run(config, ingest.IngestInputs(str(data / "dicom"), str(data / "labels.csv"), KEY), records)
    model, seconds = trained(records, tmp / "value-train", config)
    rows = []
    t = f"T={config.preprocess.frames}{', pad' if args.value_frames else ''}"
    t += ", full matrices" if args.value_full else ""
    t += "".join(f", {item}" for item in args.value_train)
    for name, variant in ((f"sequence ({t})", ""), ("frames shuffled at test", "shuffled"),
                          ("one frame repeated at test", "one_frame")):
        predicted, truth = test_outputs(model, records, F.VALUE, variant)
        metrics = value_metrics(predicted, truth, (40.0, 50.0))
        ci = bootstrap_intervals(predicted, truth, seed=0, samples=2000, cutoffs=(40.0, 50.0))
        rows.append({"model": f"cine_ef value, {name}", "mae": metrics["mean_absolute_error"],
                     "ci95": list(ci["mean_absolute_error"]), "r2": metrics["r_squared"],
                     "r2_ci95": list(ci["r_squared"]), "rmse": metrics["root_mean_squared_error"],
                     "auc_below_40": metrics["auc_below_40"], "auc_below_50": metrics["auc_below_50"],
                     "series": int(len(truth)), **({"train_seconds": round(seconds)} if not variant else {})})
    return rows


def rare_labels(data: Path, share: float, seed: int) -> Path:
    """labels.csv of `data` with the reduced-EF series kept at random so that they are
    about `share` of the series (cine_ef writes them about half of its series)."""
    rows = list(csv.reader((data / "labels.csv").open()))
    rng = np.random.default_rng(seed)
    keep = share / (1.0 - share)  # of reduced EF, against every normal series
    kept = [r for r in rows[1:] if r[1] != "reduced_ef" or rng.random() < keep]
    with (data / "rare_labels.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([rows[0], *kept])
    return data / "rare_labels.csv"


def anomaly(args: argparse.Namespace, tmp: Path, config: PipelineConfig) -> list[dict[str, object]]:
    data, records = tmp / "cine_ef-anomaly-data", tmp / "cine_ef-anomaly-records"
    synth.run("cine_ef", args.anomaly_patients, args.seed, data, small=True)
    labels = rare_labels(data, args.abnormal_share, args.seed)
    config = with_train(config, target="anomaly")
    ingest.run(config, ingest.IngestInputs(str(data / "dicom"), str(labels), KEY), records)
    model, seconds = trained(records, tmp / "anomaly-train", config)
    threshold = float(json.loads((Path(model) / "assets.extra" / "medseq_spec.json").read_text())
                      ["training"]["anomaly"]["threshold"])
    rows = []
    for name, output, variant in (("anomaly_score", F.ANOMALY_SCORE, ""),
                                  ("domain_score (embedding distance)", F.DOMAIN_SCORE, ""),
                                  ("anomaly_score, frames shuffled at test", F.ANOMALY_SCORE, "shuffled")):
        score, truth = test_outputs(model, records, output, variant)
        normal = truth == record_spec(records).classes.index("normal")
        low, high = bootstrap_intervals(score, ~normal, seed=0, samples=2000,
                                        metrics=lambda p, y: {"auc": binary_auc(p, y)})["auc"]
        row: dict[str, object] = {"model": f"cine_ef anomaly, {name}", "auc": binary_auc(score, ~normal),
                                  "ci95": [low, high], "series": int(len(score)), "abnormal": int((~normal).sum())}
        if output == F.ANOMALY_SCORE and not variant:
            row.update(train_seconds=round(seconds), threshold=threshold,
                       sensitivity=float(np.mean(score[~normal] > threshold)),
                       false_alarm=float(np.mean(score[normal] > threshold)))
        rows.append(row)
    return rows


def phase(args: argparse.Namespace, tmp: Path, config: PipelineConfig) -> list[dict[str, object]]:
    data, records = tmp / "cine_phase-data", tmp / "cine_phase-records"
    synth.run("cine_phase", args.phase_patients, args.seed, data, small=True, target="frames")
    config = with_preprocess(with_train(config, target="frames"), frames=40, temporal="pad")
    ingest.run(config, ingest.IngestInputs(str(data / "dicom"), str(data / "frame_labels.csv"), KEY), records)
    rows = []
    for causal in (False, True):
        model, seconds = trained(records, tmp / f"phase-train-{causal}", with_train(config, causal=causal))
        name = "causal" if causal else "sequence"
        for label, variant in ((f"{name} (T=40)", ""), (f"{name}, frames shuffled at test", "shuffled"),
                               (f"{name}, one frame repeated at test", "one_frame")):
            if causal and variant:
                continue
            scores, truth = test_outputs(model, records, F.FRAME_VALUES, variant)
            metrics = frame_metrics(scores, truth)
            ci = bootstrap_intervals(scores, truth, seed=0, samples=2000)
            rows.append({"model": f"cine_phase events, {label}", "event_error": metrics["event_error"],
                         "ci95": list(ci["event_error"]), "event_error_ed": metrics["event_error_0"],
                         "event_error_es": metrics["event_error_1"], "event_error_ms": metrics["event_error_ms"],
                         "frame_mae": metrics["frame_mae"], "events_missed": metrics["events_missed"],
                         "series": int(len(truth)), **({"train_seconds": round(seconds)} if not variant else {})})
    return rows


SECTIONS = {"anomaly": anomaly, "cine": cine, "ct": ct, "dce": dce, "phase": phase, "sax": sax, "value": value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=1000, help="cine_ef patients (about 1.3 series each)")
    parser.add_argument("--ct-patients", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="synth seed")
    parser.add_argument("--epochs", type=int, help="override train.epochs of the shipped config")
    parser.add_argument("--split", type=float, nargs=3, default=(0.5, 0.1, 0.4), metavar=("TRAIN", "EVAL", "TEST"),
                        help="patient split; a large test share narrows the intervals of the controls")
    parser.add_argument("--dce-patients", type=int, default=300, help="dce_kinetics patients (2-4 records each)")
    parser.add_argument("--sax-patients", type=int, default=300, help="cine_sax patients")
    parser.add_argument("--depth", type=int, default=8, help="preprocess.depth of cine_sax under volumes")
    parser.add_argument("--min-drop", type=float, default=0.1, help="evaluate.temporal_min_drop of the dce gate")
    parser.add_argument("--value-patients", type=int, default=1000, help="cine_ef patients of the value section")
    parser.add_argument("--noise", type=float, default=3.0, help="EF points of measurement noise (value section)")
    parser.add_argument("--value-frames", type=int, default=0,
                        help="value section: preprocess.frames with temporal: pad (0: the shipped T=16, sample)")
    parser.add_argument("--value-full", action="store_true",
                        help="value section on full matrices (192-256, resampled to the model's 64 with Pillow's "
                             "anti-aliased resize: partial-volume edges) instead of synth --small's 48-64")
    parser.add_argument("--value-train", nargs="*", default=[], metavar="KEY=VALUE",
                        help="value section: train settings over the shipped ones (YAML values), e.g. lstm_units=64")
    parser.add_argument("--phase-patients", type=int, default=600, help="cine_phase patients (events per frame)")
    parser.add_argument("--anomaly-patients", type=int, default=600, help="cine_ef patients of the anomaly section")
    parser.add_argument("--abnormal-share", type=float, default=0.1,
                        help="anomaly section: the share of reduced-EF series kept (the rare abnormal class)")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=sorted(SECTIONS),
                        help="sections to run (all by default)")
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args()
    config = load_config()
    split = dataclasses.replace(config.ingest.split, **dict(zip(("train", "eval", "test"), args.split, strict=True)))
    config = dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, split=split))
    if args.epochs:
        config = with_train(config, epochs=args.epochs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            rows += [{**row, "section": name} for row in SECTIONS[name](args, Path(tmp), config)]
    print(f"bench_quality: shipped config, {config.train.epochs} epochs, split {args.split}; test split AUC with "
          "bootstrap 95 % interval")
    for row in rows:
        ci = row["ci95"]
        interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) else ""
        n = f"{row['series']} series" if row["series"] else ""
        seconds = f"{row['train_seconds']} s" if "train_seconds" in row else ""
        gate = row.get("evaluate")
        verdict = (f" {gate['decision']} (drop {gate['auc_drop_one_frame']:.3f}, temporal gate "
                   f"{'passed' if gate['temporal_check_passed'] else 'failed'})") if isinstance(gate, dict) else ""
        if "event_error" in row:
            print(f"  {row['model']:52} event error {row['event_error']:.2f} {interval:16} (ED "
                  f"{row['event_error_ed']:.2f}, ES {row['event_error_es']:.2f} source frames; "
                  f"{row['event_error_ms']:.0f} ms) missed {row['events_missed']:.1%} {n:11} {seconds}")
            continue
        if "mae" in row:
            r2 = row["r2_ci95"]
            print(f"  {row['model']:52} MAE {row['mae']:.2f} {interval:16} R² {row['r2']:.3f} "
                  f"[{r2[0]:.3f}, {r2[1]:.3f}] AUC(EF<40) {row['auc_below_40']:.3f} {n:11} {seconds}")
            continue
        alarm = (f" sensitivity {row['sensitivity']:.2f}, false alarms {row['false_alarm']:.2f} at "
                 f"{row['threshold']:.3g} ({row['abnormal']} abnormal)") if "sensitivity" in row else ""
        print(f"  {row['model']:52} AUC {row['auc']:.3f} {interval:16} {n:11} {seconds}{verdict}{alarm}")
    write_results(Path(args.json), args, rows)


def write_results(path: Path, args: argparse.Namespace, rows: list[dict[str, object]]) -> None:
    """The rows of the sections run now, beside those of the other sections from earlier runs."""
    kept: list[dict[str, object]] = []
    runs: dict[str, object] = {}
    if path.exists():
        previous = json.loads(path.read_text())
        runs = previous.get("runs", {})
        for row in previous["rows"]:
            section = row.get("section") or ("ct" if str(row["model"]).startswith("ct_nodule") else "cine")
            if section not in args.only:
                kept.append({**row, "section": section})
        for section in {str(row["section"]) for row in kept} - set(runs):
            runs[section] = previous.get("args")
    runs.update({name: vars(args) for name in args.only})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs, "rows": kept + rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
