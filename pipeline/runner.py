"""`medseq run`: every stage on the embedded defaults, into one run folder.

    RUN/ingest/    records, rejected.jsonl, qc.json
    RUN/validate/  stats.json, anomalies.json (anomalies stop the run)
    RUN/train/     checkpoints/, logs/, model/
    RUN/evaluate/  metrics/, report.html, BLESSED | NOT_BLESSED
    RUN/serving/   <model_name>/<version>/, models.config (only when blessed)

Each stage reads only the folders of the stages before it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from medseq.pipeline.config import PipelineConfig, SynthConfig, to_dict
from medseq.pipeline.errors import ConfigError, StageFailed

KEY_FILE = "hash.key"
SYNTH_DIR = "synth"
SYNTH_RECORD = "synth.json"  # the synth section that made RUN/synth: reused while it matches


@dataclass(frozen=True)
class RunOutputs:
    run_dir: str
    blessed: bool
    served: str | None
    reasons: tuple[str, ...]


def _stage(number: int, name: str, detail: str) -> float:
    print(f"[{number}/5] {name}: {detail}", flush=True)
    return time.monotonic()


def _done(started: float, summary: str) -> None:
    print(f"      {summary} ({time.monotonic() - started:.1f} s)", flush=True)


def synthetic_input(synth: SynthConfig, run: Path) -> tuple[Path, bool]:
    """RUN/synth with `medseq synth`'s output for the config's `synth` section; reused when
    it was made from the same section. Returns (folder, reused)."""
    from medseq.components import synth as synthesize

    target = run / SYNTH_DIR
    wanted = to_dict(synth)
    record = target / SYNTH_RECORD
    if record.exists() and json.loads(record.read_text()) == wanted:
        return target, True
    staging = run / f".{SYNTH_DIR}-partial"
    shutil.rmtree(staging, ignore_errors=True)
    synthesize.run(synth.task, synth.patients, synth.seed, staging, small=synth.small)
    (staging / SYNTH_RECORD).write_text(json.dumps(wanted, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target, False


def run_pipeline(config: PipelineConfig, run_dir: str | Path, beam_args: list[str] | None = None) -> RunOutputs:
    """Runs ingest -> validate -> train -> evaluate -> push; raises StageFailed on anomalies."""
    from medseq.components import evaluate, ingest, push, train, validate
    from medseq.components.ingest import deid

    run = Path(run_dir).resolve()
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    key_file = Path(config.ingest.hash_key_file) if config.ingest.hash_key_file else run / KEY_FILE
    if not key_file.exists():
        deid.new_key_file(key_file)
    key = deid.load_key(str(key_file))
    extra = list(beam_args or [])

    if config.synth is not None:
        where = run / SYNTH_DIR
        print(f"medseq run: SYNTHETIC DATA, no patient's images: the config's `synth` section runs\n"
              f"  {config.synth.command(str(where))}\n"
              f"  To run on your DICOM, give a --config with `input` and `labels` instead.", flush=True)
        t = _stage(0, "synth", f"{config.synth.task}, {config.synth.patients} patients, seed {config.synth.seed}")
        folder, reused = synthetic_input(config.synth, run)
        _done(t, f"reused {folder} (same synth section)" if reused else f"written to {folder}")
        config = config.on_input(str(folder / "dicom"), str(folder / "labels.csv"))
    if not (config.input and config.labels):
        raise ConfigError("expected `input` and `labels` (your DICOM and its labels.csv) or a `synth` section in "
                          "the config, found neither")

    t = _stage(1, "ingest", "DICOM -> TFRecords (Apache Beam)")
    ingested = ingest.run(config, run / "ingest", key=key, beam_args=extra)
    _done(t, f"records {ingested.records}, rejected {ingested.rejected} (see ingest/rejected.jsonl)")

    t = _stage(2, "validate", "statistics and schema")
    checked = validate.validate(str(run / "ingest"), run / "validate", config.validate.schema,
                                max_label_linf=config.validate.max_label_linf,
                                beam_args=ingest.default_beam_args([*config.validate.beam_args, *extra]))
    print((run / "validate" / "stats.txt").read_text(), end="")
    if checked.anomalies:
        lines = "\n".join(f"  - [{a['kind']}] {a['split']}: {a['message']}" for a in checked.anomalies)
        count = len(checked.anomalies)
        raise StageFailed(f"validate found {count} anomal{'y' if count == 1 else 'ies'}; the run stops here:\n{lines}")
    _done(t, "no anomalies")

    t = _stage(3, "train", f"CNN+LSTM, strategy {config.train.strategy}, {config.train.epochs} epochs")
    trained = train.run(run / "ingest", run / "train", config.train)
    _done(t, f"model at {trained.model_dir}")

    serving_dir = run / config.push.serving_dir
    baseline = push.served_model(serving_dir, config.push.model_name)
    against = f" vs. served version {baseline.name}" if baseline else ""
    t = _stage(4, "evaluate", f"TFMA on held-out patients{against}")
    evaluated = evaluate.evaluate(str(run / "ingest"), trained.model_dir, run / "evaluate",
                                  config.evaluate.eval_config, str(baseline) if baseline else None,
                                  beam_args=[*config.evaluate.beam_args], settings=config.evaluate)
    print("      " + evaluate.summary(evaluated).replace("\n", "\n      "), flush=True)
    _done(t, f"report: {run / 'evaluate' / 'report.html'}")

    t = _stage(5, "push", "blessed models only")
    if not evaluated.blessed:
        _done(t, "skipped: not blessed")
        return RunOutputs(str(run), False, None, evaluated.reasons)
    pushed = push.push(trained.model_dir, run / "evaluate", serving_dir, config.push.model_name,
                       config.push.keep_versions, config.push.warmup_batch_sizes)
    retired = f"; removed old version(s) {', '.join(map(str, pushed.removed))}" if pushed.removed else ""
    _done(t, f"version {pushed.version}{retired}")
    (run / "run.json").write_text(json.dumps({"served": pushed.version_dir}, indent=2))
    return RunOutputs(str(run), True, pushed.version_dir, ())
