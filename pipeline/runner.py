"""`medseq run`: every stage on the embedded defaults, into one run folder.

    RUN/synth/     synthetic DICOM, when the config has a `synth` section
    RUN/ingest/    records, rejected.jsonl, qc.json
    RUN/validate/  stats.json, anomalies.json (anomalies stop the run)
    RUN/train/     checkpoints/, logs/, model/
    RUN/evaluate/  metrics/, report.html, BLESSED | NOT_BLESSED
    RUN/serving/   <model_name>/<version>/, models.config (only when blessed)
    RUN/run.json   the run record (pipeline/run_record.py); RUN/report.html the run report

Each stage reads only the folders of the stages before it. A stage whose inputs and
config are unchanged since it last finished is reused (`run.json`); `start_from`
reruns from a stage on, `only` runs one stage on the outputs already there; a stage a
killed run was in starts again, and training resumes from its checkpoint.
"""

from __future__ import annotations

import hmac
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import stages
from .config import PipelineConfig, to_dict
from .errors import ConfigError, MedseqError, StageFailed
from .run_record import RunRecord, cache_key

KEY_FILE = "hash.key"
STAGES = ("synth", "ingest", "validate", "train", "evaluate", "push")


class _Stop(Exception):
    """Raised past the stage of `--only`: the stages after it do not run."""


@dataclass(frozen=True)
class RunOutputs:
    run_dir: str
    blessed: bool
    served: str | None
    reasons: tuple[str, ...]
    report: str | None = None


@dataclass
class Runner:
    """Runs, reuses or skips each stage and keeps the run record."""

    run: Path
    record: RunRecord
    start_from: str | None = None
    only: str | None = None
    reused: list[str] = field(default_factory=list)

    def forced(self, name: str) -> bool:
        if self.only:
            return name == self.only
        return bool(self.start_from) and STAGES.index(name) >= STAGES.index(self.start_from or "synth")

    def stage(self, name: str, title: str, section: object, inputs: dict[str, Any],
              outputs: Callable[[], dict[str, str]], work: Callable[[bool], stages.Result]) -> stages.Result:
        """Reuses stage `name` when its cache key and outputs are unchanged, else runs `work(resume)`."""
        number = STAGES.index(name)
        if self.only and number > STAGES.index(self.only):
            raise _Stop
        print(f"[{number}/5] {name}: {title}", flush=True)
        key = cache_key(name, section, inputs)
        previous = self.record.previous.get(name, {})
        present = {} if self.forced(name) else outputs()  # fingerprinted once: outputs can be large
        if self.only and name != self.only or not self.forced(name) and self.record.reusable(name, key, present):
            if not present:
                raise StageFailed(f"--only {self.only}: expected the {name} output of an earlier run in {self.run}, "
                                  f"found none; run without --only first")
            if name in self.record.previous:
                self.record.reuse(name)
            self.reused.append(name)
            print(f"      reused: inputs and config unchanged since {previous.get('ended', 'an earlier run')}"
                  if not self.only else "      reused (--only)", flush=True)
            return stages.Result(previous.get("summary", ""), present, previous.get("detail", {}))
        resume = not self.forced(name) and self.record.interrupted(name, key)
        self.record.begin(name, key, inputs)
        started = time.monotonic()
        try:
            result = work(resume)
        except MedseqError as exc:
            self.record.end(name, "failed", str(exc).splitlines()[0], seconds=time.monotonic() - started)
            raise
        except BaseException as exc:
            self.record.end(name, "failed", f"{type(exc).__name__}", seconds=time.monotonic() - started)
            raise
        self.record.end(name, "done", result.summary, result.outputs, time.monotonic() - started, result.detail)
        print(f"      {result.summary} ({time.monotonic() - started:.1f} s)", flush=True)
        return result


def _key(run: Path, config: PipelineConfig) -> tuple[bytes, str]:
    from ..components.io import deid

    key_file = Path(config.ingest.hash_key_file) if config.ingest.hash_key_file else run / KEY_FILE
    if not key_file.exists():
        deid.new_key_file(key_file)
    key = deid.load_key(str(key_file))
    # The record names which key made the records without holding it: an HMAC under the key.
    return key, hmac.new(key, b"medseq run.json key id", "sha256").hexdigest()[:16]


def nothing_new(config: PipelineConfig, run_dir: str | Path) -> str | None:
    """`medseq run --if-new`: one line when the run folder's last ingest already holds
    everything its input holds now (no run need start), else None. A DICOMweb input is
    asked what it lists (QIDO-RS, no instance fetched) and each series compared with the
    fetch manifest of the last ingest (its keyed hash, its number of instances); any
    other input by its content fingerprint against run.json's."""
    import json

    from ..components.ingest.dicomweb import read_manifest
    from ..components.ingest.dicomweb.client import is_dicomweb

    run = Path(run_dir).resolve()
    record = run / "run.json"
    if config.synth is not None or not config.input or not record.exists():
        return None
    ingest = json.loads(record.read_text()).get("stages", {}).get("ingest", {})
    if ingest.get("status") != "done" or not (run / "ingest" / "qc.json").exists():
        return None
    if not is_dicomweb(config.input):
        now = {"dicom": stages.input_print(config.input), "labels": stages.input_print(config.labels)}
        seen = ingest.get("inputs", {})
        if any(seen.get(k) != v for k, v in now.items()):
            return None
        return f"nothing new: the input and its labels are what the last ingest in {run} read"
    import time

    from ..components.ingest.dicomweb import listed_series
    from ..components.ingest.dicomweb.client import Service
    from ..components.io import deid

    key, _ = _key(run, config)
    fetched = read_manifest(str(run / "ingest")).get("series", {})
    settings = config.ingest.dicomweb
    listed = listed_series(Service(config.input, settings), settings, time.monotonic() + settings.deadline_s)
    for ref in listed:
        known = fetched.get(deid.keyed_hash(key, "series", ref.series_uid))
        if known is None or ref.instances and known.get("instances") != ref.instances:
            return None
    if stages.input_print(config.labels) != ingest.get("inputs", {}).get("labels"):
        return None
    return f"nothing new: the DICOMweb input lists {len(listed)} series, each fetched by the last ingest in {run}"


def run_pipeline(config: PipelineConfig, run_dir: str | Path, beam_args: list[str] | None = None,
                 start_from: str | None = None, only: str | None = None) -> RunOutputs:
    """Runs (or reuses) synth -> ingest -> validate -> train -> evaluate -> push, then writes the run report."""
    from ..components.io.output_lock import claim
    from ..components.push.model_card import package_versions

    run = Path(run_dir).resolve()
    claim(str(run), "run folder")  # a folder of the user's (a source tree, `--out .`) is refused
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    key, key_id = _key(run, config)
    record = RunRecord(run, to_dict(config), package_versions())
    runner = Runner(run, record, start_from, only)
    outcome = RunOutputs(str(run), False, None, ("the run did not finish",))
    try:
        outcome = _stages(runner, config, key, key_id, list(beam_args or []))
        return outcome
    except _Stop:
        outcome = RunOutputs(str(run), False, None, (f"--only {only}: the later stages did not run",))
        return outcome
    except StageFailed as exc:
        outcome = RunOutputs(str(run), False, None, (str(exc),))
        raise
    finally:
        record.outcome(blessed=outcome.blessed, served=outcome.served, reasons=list(outcome.reasons),
                       reused=runner.reused)
        report = stages.write_run_report(run, config)
        if report:
            print(f"run: report {report}", flush=True)


def _stages(runner: Runner, config: PipelineConfig, key: bytes, key_id: str, beam_args: list[str]) -> RunOutputs:
    run = runner.run
    if config.synth is not None:
        where = run / stages.SYNTH_DIR
        print(f"medseq run: SYNTHETIC DATA, no patient's images: the config's `synth` section runs\n"
              f"  {config.synth.command(str(where))}\n"
              f"  To run on your DICOM, give a --config with `input` and `labels` instead.", flush=True)
        synth = config.synth
        runner.stage("synth", f"{synth.task}, {synth.patients} patients, seed {synth.seed}", to_dict(synth), {},
                     lambda: stages.folder_print(where, "labels.csv"), lambda _: stages.synth(synth, run))
        labels = "frame_labels.csv" if config.train.target == "frames" else "labels.csv"
        config = config.on_input(str(where / "dicom"), str(where / labels))
    if not (config.input and config.labels):
        raise ConfigError("expected `input` and `labels` (your DICOM and its labels.csv) or a `synth` section in "
                          "the config, found neither")
    ingest_dir, validate_dir, train_dir, eval_dir = (run / n for n in ("ingest", "validate", "train", "evaluate"))
    ingest_in = {"dicom": stages.input_print(config.input), "labels": stages.input_print(config.labels),
                 "hash_key_id": key_id}
    records = runner.stage("ingest", "DICOM -> TFRecords (Apache Beam)", to_dict([config.preprocess, config.ingest]),
                           ingest_in, lambda: stages.folder_print(ingest_dir, "qc.json"),
                           lambda _: stages.ingest(config, ingest_dir, key, beam_args)).outputs
    runner.stage("validate", "statistics and schema", to_dict(config.validate), records,
                 lambda: stages.folder_print(validate_dir, "stats.json"),
                 lambda _: stages.validate(config, ingest_dir, validate_dir, beam_args))

    def train(resume: bool) -> stages.Result:
        if not resume:
            shutil.rmtree(train_dir, ignore_errors=True)  # checkpoints of another config must not be resumed
        return stages.train(config, ingest_dir, train_dir)

    model = runner.stage("train", f"CNN+LSTM, strategy {config.train.strategy}, {config.train.epochs} epochs",
                         to_dict(config.train), records,
                         lambda: stages.folder_print(train_dir / "model", "saved_model.pb"), train).outputs
    serving_dir = run / config.push.serving_dir
    baseline, baseline_in = stages.baseline(serving_dir, config.push.model_name, model)
    against = f" vs. served version {baseline.name}" if baseline else ""
    evaluated = runner.stage(
        "evaluate", f"TFMA on held-out patients{against}", to_dict(config.evaluate),
        {**records, **model, "baseline": baseline_in}, lambda: stages.evaluation_print(eval_dir),
        lambda _: stages.evaluate(config, ingest_dir, train_dir / "model", eval_dir, baseline, beam_args))
    edge = f", with {', '.join(config.push.formats)}" if config.push.formats else ""
    pushed = runner.stage("push", f"blessed models only{edge}", to_dict(config.push),
                          {**model, **evaluated.outputs, **(records if config.push.formats else {})},
                          lambda: stages.served_print(serving_dir, config.push.model_name, model),
                          lambda _: stages.push(config, train_dir / "model", model, eval_dir, serving_dir,
                                                ingest_dir))
    if not evaluated.detail.get("blessed"):
        return RunOutputs(str(run), False, None, tuple(evaluated.detail.get("reasons", ())))
    return RunOutputs(str(run), True, pushed.detail.get("served"), ())
