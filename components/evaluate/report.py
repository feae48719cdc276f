"""`report.html` of an evaluation: one self-contained page (inline CSS and PNGs, no
network) that reads top-down as a reviewer decides: the gate decision with every
threshold and its numbers, the metrics with intervals, the curves, the slices, and
whether the model uses the order of the frames."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..model import plots
from ..model.intervals import LOWER_IS_BETTER, percent
from .inference import EvalPredictions

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#1c1c1c;padding:0 16px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.decision{padding:14px 18px;border-radius:6px;color:#fff;font-size:22px;font-weight:600;margin:12px 0}
.blessed{background:#1e7d32}.not{background:#b3261e}
table{border-collapse:collapse;margin:6px 0} td,th{padding:4px 10px;border-bottom:1px solid #eee;text-align:left}
th{background:#f5f5f5} td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1e7d32;font-weight:600}.fail{color:#b3261e;font-weight:600}.muted{color:#666}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plots img{border:1px solid #eee}
"""

NUMBER = re.compile(r"^(-|[-+]?\d[\d.,]*)$")  # right-aligned cells
HEADLINE = ("r_squared", "mean_absolute_error", "root_mean_squared_error", "calibration", "calibration_slope",
            "auc", "macro_auc", "auc_precision_recall", "binary_accuracy", "sparse_categorical_accuracy",
            "precision", "recall", "specificity", "mean_label", "mean_prediction", "example_count")


def esc(value: object) -> str:
    return html.escape(str(value))


def num(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.4f}"


def _ci(interval: Sequence[float] | None) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else '<span class="muted">-</span>'


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if NUMBER.match(c) else f"<td>{c}</td>"
                                     for c in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _ordered(metrics: Mapping[str, float]) -> list[str]:
    first = [m for m in HEADLINE if m in metrics]
    return first + sorted(m for m in metrics if m not in first and not m.endswith("_diff"))


def interval_head(verdict: Mapping[str, Any]) -> str:
    """The interval column's heading, at the configured level (evaluate.confidence_level)."""
    return f"{percent(float(verdict.get('confidence_level', 0.95)))} interval"


def gate_section(verdict: Mapping[str, Any]) -> str:
    rows = [[esc(c["metric"]), esc(c["slice"]), esc(c["expected"]), num(c["found"]), _ci(c["interval"]),
             '<span class="pass">pass</span>' if c["passed"] else '<span class="fail">FAIL</span>']
            for c in verdict["checks"]]
    parts = [table(("metric", "slice", "expected", "found", interval_head(verdict), "result"), rows) if rows else
             '<p class="fail">No thresholds: the gate fails closed.</p>']
    parts += [f'<p class="fail">{esc(r)}</p>' for r in verdict["reasons"] if not r.startswith(
        tuple(f"{c['metric']} on " for c in verdict["checks"]))]
    parts += [f'<p class="muted">{esc(n)}</p>' for n in [*verdict["not_gated"], *verdict["notes"]]]
    return "".join(parts)


def metrics_section(verdict: Mapping[str, Any]) -> str:
    metrics, served = verdict["metrics"], verdict["baseline_metrics"]
    head = ["metric", "candidate", interval_head(verdict)] + (["served model", "change"] if served else [])
    rows = []
    for m in _ordered(metrics):
        row = [esc(m), num(metrics[m]), _ci(verdict["intervals"].get(m))]
        if served:
            row += [num(served.get(m)), num(metrics.get(f"{m}_diff"))]
        rows.append(row)
    return table(head, rows)


def slices_section(verdict: Mapping[str, Any]) -> str:
    gated = {c["slice"] for c in verdict["checks"]}
    name = "auc" if len(verdict["classes"]) == 2 else "macro_auc"
    accuracy = "binary_accuracy" if len(verdict["classes"]) == 2 else "sparse_categorical_accuracy"
    if verdict.get("target") == "value":
        name, accuracy = "r_squared", "mean_absolute_error"
    rows = [[esc(s["slice"]), str(s["series"]), num(s["metrics"].get(name)), _ci(s["intervals"].get(name)),
             num(s["metrics"].get(accuracy)), "gated" if s["slice"] in gated else
             '<span class="muted">too small to gate</span>' if s["series"] < verdict.get("min_slice_size", 0)
             else '<span class="muted">reported</span>'] for s in verdict["slices"]]
    return table(("slice", "series", name, interval_head(verdict), accuracy, "gate"), rows)


def temporal_section(verdict: Mapping[str, Any]) -> str:
    t = verdict["temporal"]
    labels = {"frames": "frames in their order", "shuffled": "frames shuffled",
              "one_frame": "one frame repeated T times"}
    rows = [[labels[k], num(t[k]["value"]), _ci(t[k]["interval"]),
             num(t["frames"]["value"] - t[k]["value"]) if k != "frames" else "-"] for k in labels]
    what = "loses"
    if t["metric"] in LOWER_IS_BETTER:  # an error rises when time is taken away
        rows = [[*r[:3], num(t[k]["value"] - t["frames"]["value"]) if k != "frames" else "-"]
                for r, k in zip(rows, labels, strict=True)]
        what = "gains"
    gate = (f"Gate: refuse when the one-frame drop is below {t['min_drop']:g}." if t["min_drop"] is not None
            else "Not gated (evaluate.temporal_min_drop is off).")
    change = "rise" if what == "gains" else "drop"
    gate = gate.replace("drop", change)
    return (table(("input", t["metric"], interval_head(verdict), change), rows) +
            f'<p class="muted">A model that reads the sequence {what} {t["metric"]} when time is taken away. '
            f'{gate}</p>')


SHIFT_NAMES = {"noise": "noise (SD 0.15)", "intensity": "another intensity profile (gamma 0.5)",
               "inverted": "contrast inverted", "corrupted": "second half of the frames corrupt"}


def domain_section(verdict: Mapping[str, Any], preds: EvalPredictions) -> str:
    """How the domain score parts the held-out series from shifted copies of them."""
    d = verdict.get("domain")
    if not d:
        return "<p class=muted>The model gives no domain score.</p>"
    share = lambda x: "-" if x is None else f"{100 * x:.0f} %"
    rows = [[SHIFT_NAMES.get(k, k), num(v["auroc"]), share(v["flagged"]), num(v["median"])]
            for k, v in d["shifts"].items()]
    scores = {"held out": preds.domain["frames"], **{k: v for k, v in preds.domain.items() if k != "frames"}}
    return (table(("shifted copy of the held-out series", "AUROC against held out", "flagged", "median score"), rows)
            + f'<p class="muted">Held out: {share(d["false_alarm"])} of {d["series"]} series above the threshold '
            f'{num(d["threshold"]) if d["threshold"] is not None else "-"} (set on the eval split at the training '
            "false-alarm rate). Not gated.</p>"
            + f"<div class=plots>{images([plots.domain_scores(scores, d['threshold'])])}</div>")


def render(verdict: Mapping[str, Any], preds: EvalPredictions, classes: Sequence[str],
           baseline_probs: np.ndarray | None = None) -> str:
    """The page for `verdict` (the BLESSED / NOT_BLESSED JSON) and the predictions behind it."""
    classes = tuple(classes)
    probs = {"candidate": preds.probs["frames"]}
    if baseline_probs is not None:
        probs["served model"] = baseline_probs
    if preds.is_frames:
        pngs = [plots.frame_curves(preds.probs["frames"], preds.labels, classes)]
        answers = f"events per frame {esc(', '.join(classes))}"
    elif preds.is_value:
        value = verdict.get("value", {})
        name = f"{value.get('column') or 'value'}{' (' + value['units'] + ')' if value.get('units') else ''}"
        pngs = [plots.value_scatter(probs, preds.labels, name),
                plots.bland_altman(preds.probs["frames"], preds.labels, name),
                plots.value_calibration(preds.probs["frames"], preds.labels, name)]
        answers = f"value {esc(name)}"
    else:
        pngs = [plots.roc_plot(probs, preds.labels, classes), plots.pr_plot(probs, preds.labels, classes),
                plots.calibration_plot(probs, preds.labels, classes),
                plots.confusion_plot(preds.probs["frames"], preds.labels, classes)]
        answers = f"classes {esc(', '.join(classes))}"
    figures = images(pngs)
    blessed = verdict["blessed"]
    against = f"against the served model {esc(verdict['baseline'])}" if verdict["baseline"] else "no served model"
    body = (f"<h1>medseq evaluation</h1><div class=muted>{verdict['eval_series']} held-out series, "
            f"{answers}; {against}</div>"
            f"<div class='decision {'blessed' if blessed else 'not'}' id=decision>{verdict['decision']}</div>"
            f"<h2>Gate</h2>{gate_section(verdict)}<h2>Metrics (overall)</h2>{metrics_section(verdict)}"
            f"<h2>Curves</h2><div class=plots>{figures}</div><h2>Slices</h2>{slices_section(verdict)}"
            f"<h2>Does the model use time?</h2>{temporal_section(verdict)}"
            f"<h2>Does the model know its domain?</h2>{domain_section(verdict, preds)}")
    return page(f"medseq evaluation: {verdict['decision']}", body)


def page(title: str, body: str) -> str:
    """A self-contained HTML page: inline style, no script, nothing fetched."""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def images(pngs: Sequence[str]) -> str:
    return "".join(f'<img alt="plot" src="data:image/png;base64,{png}">' for png in pngs)
