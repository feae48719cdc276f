"""The stages of `medseq run` as the runner calls them: each does its work through the
component's public entry and returns a one-line summary and its outputs' fingerprints;
beside them, the fingerprints the runner keys its cache on."""

from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import features as F
from .config import PipelineConfig, SynthConfig, to_dict
from .errors import StageFailed
from .fingerprints import files_fingerprint, tree_fingerprint

SYNTH_DIR = "synth"
SYNTH_RECORD = "synth.json"  # the synth section that made RUN/synth: reused while it matches


@dataclass(frozen=True)
class Result:
    summary: str
    outputs: dict[str, str]
    detail: dict[str, Any] = field(default_factory=dict)


def folder_print(folder: Path, marker: str) -> dict[str, str]:
    """{folder name: fingerprint} once `marker` (written last) is in it, else {}."""
    return {folder.name: tree_fingerprint(folder)} if (folder / marker).exists() else {}


def input_print(where: str) -> str:
    """A local folder, file or glob by content; anything remote by its address only."""
    from ..components.ingest.dicomweb.client import is_dicomweb
    from ..components.io.storage import remote

    if is_dicomweb(where):  # ingest asks the archive on every run (its fetch is incremental)
        return f"dicomweb:{where} checked {datetime.datetime.now(datetime.UTC).isoformat()}"
    if remote(where):
        return f"uri:{where}"
    path = Path(where)
    if path.is_dir():
        return tree_fingerprint(path)
    files = [where] if path.is_file() else sorted(p for p in glob.glob(where, recursive=True) if os.path.isfile(p))
    return "sha256:" + str(files_fingerprint(files)["sha256"])


def synthetic_input(synth: SynthConfig, run: Path) -> tuple[Path, bool]:
    """RUN/synth with `medseq synth`'s output for the config's `synth` section; reused when
    it was made from the same section. Returns (folder, reused)."""
    from ..components import synth as synthesize

    target = run / SYNTH_DIR
    wanted = to_dict(synth)
    record = target / SYNTH_RECORD
    if record.exists() and json.loads(record.read_text()) == wanted:
        return target, True
    staging = run / f".{SYNTH_DIR}-partial"
    shutil.rmtree(staging, ignore_errors=True)
    synthesize.run(synth.task, synth.patients, synth.seed, staging, small=synth.small, target=synth.target,
                   noise=synth.noise)
    (staging / SYNTH_RECORD).write_text(json.dumps(wanted, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target, False


def synth(section: SynthConfig, run: Path) -> Result:
    folder, reused = synthetic_input(section, run)
    return Result(f"reused {folder} (same synth section)" if reused else f"written to {folder}",
                  folder_print(folder, "labels.csv"))


def ingest(config: PipelineConfig, out: Path, key: bytes, beam_args: list[str]) -> Result:
    from ..components import ingest as component

    done = component.run(config, component.IngestInputs(config.input, config.labels, key), out, beam_args)
    fetched = f"; {fetch_line(done.fetch)}" if done.fetch else ""
    return Result(f"records {done.records}, rejected {done.rejected} (see ingest/rejected.jsonl){fetched}",
                  folder_print(out, F.QC_FILE), {"records": done.records, "rejected": done.rejected})


def fetch_line(fetch: dict[str, Any]) -> str:
    """What a DICOMweb input's fetch did, in one line."""
    return (f"dicomweb: {fetch['listed']} series listed, {fetch['fetched']} fetched ({fetch['instances']} "
            f"instances, {fetch['mb']:.1f} MB), {fetch['unchanged']} unchanged, {fetch['failed']} failed, "
            f"{fetch['retried']} retries ({fetch['seconds']:.1f} s)")


def validate(config: PipelineConfig, records: Path, out: Path, beam_args: list[str]) -> Result:
    from ..components import validate as component

    checked = component.run(config, component.ValidateInputs(str(records)), out, beam_args)
    print((out / "stats.txt").read_text(), end="")
    if checked.anomalies:
        lines = "\n".join(f"  - [{a['kind']}] {a['split']}: {a['message']}" for a in checked.anomalies)
        count = len(checked.anomalies)
        raise StageFailed(f"validate found {count} anomal{'y' if count == 1 else 'ies'}; the run stops here:\n{lines}")
    return Result("no anomalies", folder_print(out, F.STATS_FILE))


def train(config: PipelineConfig, records: Path, out: Path) -> Result:
    from ..components import train as component

    trained = component.run(config, component.TrainInputs(str(records)), out)
    resumed = f", resumed at step {trained.resumed_from_step}" if trained.resumed_from_step else ""
    return Result(f"model at {trained.model_dir}{resumed}", folder_print(out / "model", "saved_model.pb"),
                  {"best_epoch": trained.best_epoch, "steps": trained.steps})


def _served_fingerprint(version: Path) -> str | None:
    card = version / "assets.extra" / "medseq_model.json"
    if card.exists():
        found = json.loads(card.read_text()).get("fingerprints", {}).get("model")
        return str(found) if found else None
    return None


def baseline(serving_dir: Path, model_name: str, model: dict[str, str]) -> tuple[Path | None, str]:
    """The served model to compare with, and its cache input. None when nothing is served
    or the served version is this very candidate (a rerun): there is nothing to compare."""
    from ..components import push as component

    served = component.served_model(serving_dir, model_name)
    if served is None:
        return None, "none"
    found = _served_fingerprint(served) or tree_fingerprint(served)
    return (None, "none") if found in model.values() else (served, found)


def evaluation_print(out: Path) -> dict[str, str]:
    return {out.name: tree_fingerprint(out)} if (out / F.BLESSED).exists() or (out / F.NOT_BLESSED).exists() else {}


def evaluate(config: PipelineConfig, records: Path, model: Path, out: Path, served: Path | None,
             beam_args: list[str]) -> Result:
    from ..components import evaluate as component

    inputs = component.EvaluateInputs(str(records), str(model), str(served) if served else None)
    evaluated = component.run(config, inputs, out, beam_args)
    print("      " + component.summary(evaluated).replace("\n", "\n      "), flush=True)
    decision = F.BLESSED if evaluated.blessed else F.NOT_BLESSED
    return Result(f"{decision}; report: {out / 'report.html'}", evaluation_print(out),
                  {"blessed": evaluated.blessed, "reasons": list(evaluated.reasons)})


def served_print(serving_dir: Path, model_name: str, model: dict[str, str]) -> dict[str, str]:
    """{served version: fingerprint} when the newest served version is this model."""
    from ..components import push as component

    served = component.served_model(serving_dir, model_name)
    if served is None or _served_fingerprint(served) not in model.values():
        return {}
    return {f"version {served.name}": tree_fingerprint(served)}


def push(config: PipelineConfig, model: Path, model_print: dict[str, str], evaluation: Path,
         serving_dir: Path, records: Path) -> Result:
    from ..components import push as component

    if not (evaluation / F.BLESSED).exists():
        return Result("skipped: not blessed", {})
    served = component.served_model(serving_dir, config.push.model_name)
    if served is not None and _served_fingerprint(served) in model_print.values():
        return Result(f"version {served.name} already serves this model: nothing to push",
                      {f"version {served.name}": tree_fingerprint(served)}, {"served": str(served)})
    pushed = component.run(config, component.PushInputs(str(model), str(evaluation), str(records)), serving_dir)
    retired = f"; removed old version(s) {', '.join(map(str, pushed.removed))}" if pushed.removed else ""
    not_shipped = [f"{r['format']}:{r['precision']} ({r['reason']})" for r in pushed.refused]
    refused = f"; not shipped: {', '.join(not_shipped)}" if not_shipped else ""
    return Result(f"version {pushed.version}{retired}{refused}", {f"version {pushed.version}": tree_fingerprint(
        pushed.version_dir)}, {"served": pushed.version_dir, "version": pushed.version})


def write_run_report(run: Path, config: PipelineConfig) -> Path | None:
    """RUN/report.html; a failure here is reported, never hides the run's own outcome."""
    from .run_report import write_report

    try:
        return write_report(run, config)
    except Exception as exc:  # noqa: BLE001 - the report is a view of the run, not a stage of it
        print(f"run: no report.html ({type(exc).__name__}: {exc})", flush=True)
        return None
