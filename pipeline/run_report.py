"""RUN/report.html: one self-contained page (inline CSS and PNGs, no network) for a
`medseq run`: the outcome and its stages, data QC, the training curves, the
evaluation, the push and the model card. Built from the run's own files (run.json,
ingest/qc.json, train/history.json, evaluate/, the served version), so it can be
rebuilt at any time and shows what a stopped run got to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..components.evaluate.inference import PREDICTIONS_FILE, EvalPredictions
from ..components.evaluate.report import (
    esc,
    gate_section,
    images,
    page,
    slices_section,
    table,
    temporal_section,
)
from ..components.model import plots
from . import features as F
from .config import PipelineConfig
from .run_record import RECORD_FILE

REPORT_FILE = "report.html"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _outcome(record: dict[str, Any]) -> str:
    outcome = record.get("outcome") or {}
    if outcome.get("blessed"):
        return f"<div class='decision blessed' id=outcome>BLESSED: serving {esc(outcome.get('served'))}</div>"
    reasons = "; ".join(outcome.get("reasons", [])) or "the run did not finish"
    return f"<div class='decision not' id=outcome>NOT SERVED</div><p class=fail>{esc(reasons)}</p>"


def _stages(record: dict[str, Any]) -> str:
    rows = [[esc(name), esc(s.get("status", "")) + (" (reused)" if s.get("reused") else ""),
             f"{s['seconds']:.1f}" if "seconds" in s else "-", esc(s.get("summary", ""))]
            for name, s in record.get("stages", {}).items()]
    return table(("stage", "status", "seconds", "summary"), rows)


def _qc(qc: dict[str, Any] | None) -> str:
    if not qc:
        return "<p class=muted>No ingest output.</p>"
    if qc.get("target", {}).get("kind") == "value":  # the values' spread per split
        stats = qc.get("targets", {})
        splits = table(("split", "records", "mean", "std", "min", "max"), [
            [s, str(qc["records"][s]), *(f"{stats.get(s, {}).get(k, float('nan')):.4g}" for k in
                                         ("mean", "std", "min", "max"))] for s in F.SPLITS])
    elif qc.get("target", {}).get("kind") == "frames":  # key frames per event, and the frames with a weight
        frames = qc.get("frame_labels", {})
        splits = table(("split", "records", *(f"{c} key frames" for c in qc["classes"]), "labeled frames"), [
            [s, str(qc["records"][s]), *(str(qc["labels"][s].get(c, 0)) for c in qc["classes"]),
             str(frames.get(s, {}).get("labeled_frames", 0))] for s in F.SPLITS])
    else:
        splits = table(("split", "records", *qc["classes"]), [
            [s, str(qc["records"][s]), *(str(qc["labels"][s].get(c, 0)) for c in qc["classes"])] for s in F.SPLITS])
    rejected = table(("rejection reason", "files or series"), [[esc(k), str(v)] for k, v in qc["rejected"].items()]) \
        if qc["rejected"] else "<p>No input rejected.</p>"
    files = qc["files"]
    phi = qc.get("pixel_phi", {})
    decided = {**{k: v for k, v in phi.get("records", {}).items() if v},
               **{k: v for k, v in phi.get("rejected", {}).items() if v}}
    pixels = (f"<p>Text burned into the pixels (<code>ingest.pixel_phi</code>): "
              f"{esc(', '.join(f'{k} {v}' for k, v in decided.items()) or 'nothing declared by any input')}.</p>"
              if phi else "")
    return (f"<p>{files['in_records']} input files went into records, {files['rejected']} into "
            f"<code>rejected.jsonl</code>. Modalities: {esc(qc['modalities'])}; vendors: "
            f"{esc(qc['manufacturers'])}.</p>{pixels}{splits}{rejected}")


def _training(history: list[dict[str, float]] | None) -> str:
    if not history:
        return "<p class=muted>No training history.</p>"
    last = history[-1]
    metric = next(m for m in ("mae", "frame_mae", "auc") if m in last or m == "auc")
    return (images([plots.curves_plot(history, "loss"), plots.curves_plot(history, metric)]) +
            f"<p>{len(history)} epochs; last: loss {last['loss']:.4f}, "
            f"eval_{metric} {last.get(f'eval_{metric}', np.nan):.4f}.</p>")


def _evaluation(evaluate_dir: Path) -> str:
    verdict = _json(evaluate_dir / F.BLESSED) or _json(evaluate_dir / F.NOT_BLESSED)
    if not verdict:
        return "<p class=muted>No evaluation.</p>"
    classes = tuple(verdict["classes"])
    found = _json(evaluate_dir / PREDICTIONS_FILE)
    pngs = []
    if found:
        preds = EvalPredictions.from_json(found)
        probs = {"candidate": preds.probs["frames"]}
        if preds.is_frames:
            pngs = [plots.frame_curves(preds.probs["frames"], preds.labels, classes)]
        elif preds.is_value:
            name = (verdict.get("value") or {}).get("column") or "value"
            pngs = [plots.value_scatter(probs, preds.labels, name),
                    plots.bland_altman(preds.probs["frames"], preds.labels, name)]
        else:
            pngs = [plots.roc_plot(probs, preds.labels, classes),
                    plots.calibration_plot(probs, preds.labels, classes),
                    plots.confusion_plot(preds.probs["frames"], preds.labels, classes)]
    decision = "blessed" if verdict["blessed"] else "not"
    return (f"<div class='decision {decision}' id=decision>{verdict['decision']}</div>{gate_section(verdict)}"
            f"<div class=plots>{images(pngs)}</div><h3>Slices</h3>{slices_section(verdict)}"
            f"<h3>Does the model use time?</h3>{temporal_section(verdict)}"
            f"<p class=muted>Full evaluation: <code>evaluate/report.html</code>.</p>")


def _target_line(card: dict[str, Any]) -> str:
    target = card.get("target") or {}
    if target.get("kind") == "frames":
        return f"events per frame: {', '.join(target.get('events', []))}"
    if target.get("kind") == "anomaly":
        return f"anomaly: a model of {target.get('normal')} series alone"
    return ", ".join(card["classes"]) if target.get("kind") != "value" else f"value {target.get('column', '')}"


def _card(record: dict[str, Any]) -> str:
    served = (record.get("outcome") or {}).get("served")
    card = _json(Path(served) / "assets.extra" / "medseq_model.json") if served else None
    push = record.get("stages", {}).get("push", {})
    if not card:
        return f"<p>{esc(push.get('summary', 'Nothing pushed.'))}</p>"
    inputs = card["network_data_format"]["inputs"][F.FRAMES]
    rows = [["version", str(card["version"])], ["created", esc(card["created"])],
            ["input", f"{'x'.join(map(str, inputs['shape']))} {esc(inputs['dtype'])}"],
            ["target", esc(_target_line(card))],
            ["model fingerprint", esc(card["fingerprints"]["model"])],
            ["training records", esc((card["fingerprints"]["training_records"] or {}).get("sha256"))],
            ["packages", esc(", ".join(f"{k} {v}" for k, v in card["package_versions"].items()))]]
    return f"<p>{esc(push.get('summary', ''))}</p>" + table(("model card", ""), rows)


def _strips(run: Path, config: PipelineConfig) -> str:
    """A few frames of the first held-out series of each class; where the run's model is
    there, the frames that drove its decision under its Grad-CAM map too."""
    wanted = config.report.frame_strips == "on" or (config.report.frame_strips == "synthetic" and
                                                    config.synth is not None)
    if not wanted:
        return ""
    import tensorflow as tf

    from ..components.io.examples import parse_examples, record_spec, split_files

    spec, pngs, overlays, seen = record_spec(run / "ingest"), [], [], set()
    if spec.is_value or spec.is_frames:  # strips per class; a value or frames target has none
        return ""
    model = run / "train" / "model"
    signatures = tf.saved_model.load(str(model)).signatures if (model / "saved_model.pb").exists() else {}
    explain = signatures.get(F.EXPLAIN_SIGNATURE)
    files = split_files(run / "ingest", "eval")
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1):
        parsed = parse_examples(raw, spec)
        label = int(parsed[F.LABEL][0])
        if label in seen:
            continue
        seen.add(label)
        frames, valid = parsed[F.FRAMES][0].numpy(), int(parsed[F.VALID_FRAMES][0])
        name = spec.classes[label]
        pngs.append(plots.frame_strip(frames, valid, f"{name} (synthetic)" if config.synth else name))
        if explain is not None:
            out = explain(frames=parsed[F.FRAMES], valid_frames=tf.cast(parsed[F.VALID_FRAMES], tf.int32))
            attribution = out[F.ATTRIBUTION].numpy()[0]
            predicted = (f"anomaly score {float(out[F.ANOMALY_SCORE].numpy()[0]):.2f}" if F.ANOMALY_SCORE in out
                         else f"predicted {spec.classes[int(out[F.CLASS_IDS].numpy()[0])]}")
            overlays.append(plots.attribution_overlay(frames, attribution, plots.drivers((), attribution[:valid]),
                                                      f"{name}, {predicted}: where (Grad-CAM)"))
        if len(seen) == len(spec.classes):
            break
    where = (f"<h2>Where the model looked</h2><p class=muted>Grad-CAM of the predicted class on the frames it "
             f"found most in, for the same held-out series.</p><div class=plots>{images(overlays)}</div>"
             if overlays else "")
    return f"<h2>Frames per class</h2><div class=plots>{images(pngs)}</div>{where}"


def write_report(run: Path, config: PipelineConfig) -> Path:
    record = _json(run / RECORD_FILE) or {}
    synthetic = ("<p class=muted>SYNTHETIC DATA written by <code>medseq synth</code>: no patient's images.</p>"
                 if config.synth is not None else "")
    body = (f"<h1>medseq run</h1><div class=muted>{esc(run)}</div>{synthetic}{_outcome(record)}"
            f"<h2>Stages</h2>{_stages(record)}<h2>Data</h2>{_qc(_json(run / 'ingest' / F.QC_FILE))}"
            f"{_strips(run, config) if (run / 'ingest' / F.QC_FILE).exists() else ''}"
            f"<h2>Training</h2>{_training(_json(run / 'train' / 'history.json'))}"
            f"<h2>Evaluation</h2>{_evaluation(run / 'evaluate')}<h2>Push</h2>{_card(record)}")
    path = run / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.partial")
    tmp.write_text(page("medseq run", body))
    tmp.replace(path)
    return path
