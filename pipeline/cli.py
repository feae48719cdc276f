"""The `medseq` command line: one subcommand per stage, plus `synth`, `predict`, `stream`, `run`.

User mistakes (a wrong flag, a missing input, a bad config) print one line saying
what was expected and what was found, and exit with status 2. Commands that run a
Beam job pass every option they do not know to Beam, so any runner's flags work.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__, processes
from .errors import InputError, MedseqError

if TYPE_CHECKING:
    from .config import PipelineConfig

BEAM_COMMANDS = ("convert", "validate", "train", "evaluate", "run")  # train: Beam's filesystem options
NOISY_LIBRARIES = ("tensorflow", "keras", "tf_keras", "apache_beam", "tensorflow_model_analysis", "tfx_bsl",
                   "google", "absl", "pydicom")


class _Parser(argparse.ArgumentParser):
    """argparse that fails in one line (no usage dump) and suggests the closest flag. It
    keeps what it was given through argparse's public calls: each option's flags
    (`add_argument` returns its Action), the required ones, and each command's parser."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: list[str] = []  # before argparse's own __init__, which adds -h
        self.extra_flags: tuple[str, ...] = ()
        self.required: list[argparse.Action] = []
        self.commands: dict[str, _Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self._kept(super().add_argument(*args, **kwargs))

    def add_mutually_exclusive_group(self, **kwargs: Any) -> argparse._MutuallyExclusiveGroup:
        group = super().add_mutually_exclusive_group(**kwargs)
        add = group.add_argument
        group.add_argument = lambda *a, **k: self._kept(add(*a, **k))  # type: ignore[method-assign]
        return group

    def _kept(self, action: argparse.Action) -> argparse.Action:
        self.flags += action.option_strings
        if action.required:
            self.required.append(action)
        return action

    def error(self, message: str) -> NoReturn:
        if "unrecognized arguments:" in message:
            message = _with_suggestion(message, self)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _with_suggestion(message: str, parser: _Parser) -> str:
    flags = [*parser.flags, *parser.extra_flags]
    unknown = message.split(":", 1)[1].split()
    hints = [h for u in unknown for h in difflib.get_close_matches(u.split("=")[0], flags, n=1)]
    return f"{message} (did you mean {', '.join(hints)}?)" if hints else f"{message} (see --help)"


class UsageError(Exception):
    """A command line Beam's own parser refuses (its message, one line)."""


def unknown_to_beam(args: list[str]) -> list[str]:
    """The flags of `args` that Beam does not know, as Beam's own parser decides: the
    options it keeps only when told to keep unknown ones."""
    from ..components.io.beam import options

    parsed = options(args)
    beam_log = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_log.level
    beam_log.setLevel(logging.ERROR)  # "Discarding unparseable args": said here in one line instead
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # Beam's argparse prints its whole usage first
            known = parsed.get_all_options(retain_unknown_options=False)
            everything = parsed.get_all_options(retain_unknown_options=True)
    except SystemExit:
        raise UsageError(said.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]) from None
    finally:
        beam_log.setLevel(level)
    strays = set(everything) - set(known)
    return [a for a in args if a.startswith("--") and a[2:].split("=", 1)[0].replace("-", "_") in strays]


def beam_flags() -> list[str]:
    """Beam's option names as flags (`--runner`, ...), for suggestions."""
    from ..components.io.beam import options

    return sorted(f"--{name}" for name in options([]).get_all_options())


def split_beam_args(parser: _Parser, rest: list[str]) -> list[str]:
    """Unknown flags are Beam's if Beam knows them; anything else is a typo."""
    if not rest:
        return rest  # no Beam import (about 2 s) to check nothing
    parser.extra_flags = tuple(beam_flags())
    for arg in rest:
        if arg.startswith("-") and arg[1:2] != "-":
            parser.error(f"unrecognized arguments: {arg}")  # Beam's flags are all long ones
        if not arg.startswith("-") and rest.index(arg) == 0:
            parser.error(f"unrecognized arguments: {arg}")
    try:
        strays = unknown_to_beam(rest)
    except UsageError as exc:  # a Beam option given without its value
        parser.error(str(exc))
    for arg in strays:
        parser.error(f"unrecognized arguments: {arg}")
    from apache_beam.options.pipeline_options import StandardOptions

    from ..components.io.beam import options

    runner = options(rest).view_as(StandardOptions).runner or ""
    if "dask" in runner.lower():
        parser.error(f"--runner={runner}: Beam 2.77's DaskRunner cannot run medseq's jobs (it merges a DoFn's "
                     "tagged outputs into its main output, so ingest's dead letters reach its GroupByKey); use the "
                     "default runner, PortableRunner, or Flink, Spark or Dataflow")
    return rest


# Command-line options that set a config key: (option dest, section, key).
CONFIG_OPTIONS = (
    ("num_shards", "ingest", "num_shards"), ("hash_key_file", "ingest", "hash_key_file"),
    ("epochs", "train", "epochs"), ("batch_size", "train", "batch_size"), ("strategy", "train", "strategy"),
    ("eval_config", "evaluate", "eval_config"), ("model_name", "push", "model_name"),
    ("keep_versions", "push", "keep_versions"), ("formats", "push", "formats"), ("schema", "validate", "schema"),
    ("infer_schema", "validate", "infer_schema"),
)
PATH_OPTIONS = ("hash_key_file", "eval_config", "schema")


def _config(args: argparse.Namespace) -> PipelineConfig:
    """The effective config of a command: the shipped one, --config over it, then its options."""
    from ..components.io.storage import absolute
    from .config import load_config

    overrides: dict[str, Any] = {}
    for dest, section, key in CONFIG_OPTIONS:
        value = getattr(args, dest, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = absolute(value) if dest in PATH_OPTIONS else value
    if getattr(args, "split", None):
        overrides.setdefault("ingest", {})["split"] = dict(zip(("train", "eval", "test"), args.split, strict=True))
    if getattr(args, "input", None) and getattr(args, "labels", None):
        overrides.update(input=absolute(args.input), labels=absolute(args.labels))
    return load_config(args.config, overrides)


def print_config(args: argparse.Namespace) -> int:
    import yaml

    from .config import to_dict

    print(yaml.safe_dump(to_dict(_config(args)), sort_keys=False), end="")
    return 0


def cmd_synth(args: argparse.Namespace, _: list[str]) -> int:
    from ..components import synth

    stats = synth.run(args.task, args.patients, args.seed, args.out, small=args.small, target=args.target,
                      noise=args.noise)
    labels = ", ".join(f"{k}={v}" for k, v in sorted(stats.labeled.items()))
    print(f"synth: {stats.files} files, {stats.slices} images, {stats.series} series ({labels}) -> {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace, beam_args: list[str]) -> int:
    processes.fewer_malloc_arenas()  # before Beam starts its threads and workers
    from ..components import ingest

    config = _config(args)
    out = ingest.run(config, ingest.IngestInputs(config.input, config.labels), args.out, beam_args)
    if out.fetch:
        from .stages import fetch_line

        print(f"convert: {fetch_line(out.fetch)}")
    print(f"convert: records {out.records}, rejected {out.rejected} -> {out.out}")
    listed = out.qc["labels_csv"]
    if listed["not_found"]:
        print(f"  labels: {listed['not_found']} of {listed['rows']} series in the labels file are not in the input")
    for reason, count in out.qc["rejected"].items():
        print(f"  rejected {reason}: {count}")
    return 0


def cmd_validate(args: argparse.Namespace, beam_args: list[str]) -> int:
    from ..components import validate

    result = validate.run(_config(args), validate.ValidateInputs(args.examples, args.baseline), args.out, beam_args)
    print(result.table, end="")
    if result.schema_path:
        print(f"validate: inferred schema written to {result.schema_path}")
    for a in result.anomalies:
        print(f"anomaly [{a['kind']}] {a['split']}: {a['message']}")
    print(f"validate: {len(result.anomalies)} anomalies -> {args.out}")
    return 1 if result.anomalies else 0


def cmd_train(args: argparse.Namespace, beam_args: list[str]) -> int:
    from ..components import train

    config = _config(args)
    out = train.run(config, train.TrainInputs(args.examples), args.out, beam_args)
    exported = f"epoch {out.best_epoch} (best {config.train.monitored[0]})" if out.best_epoch else "the last epoch"
    print(f"train: {out.epochs_run} epoch(s) run ({out.steps} steps in all, resumed from epoch "
          f"{out.resumed_from_epoch}); exported {exported} -> {out.model_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace, beam_args: list[str]) -> int:
    from ..components import evaluate, push

    config = _config(args)
    baseline = args.baseline
    if baseline is None and args.serving_dir:
        served = push.served_model(args.serving_dir, config.push.model_name)
        baseline = str(served) if served else None
    out = evaluate.run(config, evaluate.EvaluateInputs(args.examples, args.model, baseline), args.out, beam_args)
    print(evaluate.summary(out))
    return 0 if out.blessed else 1


def cmd_push(args: argparse.Namespace, _: list[str]) -> int:
    from ..components import push

    out = push.run(_config(args), push.PushInputs(args.model, args.evaluation, args.examples), args.serving_dir)
    removed = f"; removed version(s) {', '.join(map(str, out.removed))}" if out.removed else ""
    print(f"push: version {out.version} -> {out.version_dir} (config {out.models_config}){removed}")
    for refused in out.refused:
        print(f"push: {refused['format']}:{refused['precision']} not shipped: {refused['reason']}")
    return 0


def cmd_export(args: argparse.Namespace, _: list[str]) -> int:
    from .config import EXPORT_FORMATS

    pairs = [(f, p) for f in args.format for p in args.precision]
    formats = tuple(f"{f}:{p}" for f, p in pairs if p in EXPORT_FORMATS[f])
    for f, p in pairs:
        if p not in EXPORT_FORMATS[f]:
            print(f"export: {f} {p} is not offered ({f} offers {', '.join(EXPORT_FORMATS[f])})", file=sys.stderr)
    if not formats:
        raise InputError("export: none of the requested format and precision pairs is offered")
    from ..components import export

    out = export.run(_config(args), export.ExportInputs(args.model, args.examples, formats), args.out)
    print(f"export: {len(out.artifacts)} of {len(formats)} artifact(s) written -> {out.out}")
    return 1 if out.refused else 0


def cmd_predict(args: argparse.Namespace, _: list[str]) -> int:
    from ..components import predict
    from ..components.io import deid
    from ..components.preprocessing.reasons import DUPLICATE_INSTANCE

    key = deid.load_key(args.hash_key_file) if args.hash_key_file else None
    results = predict.predict(args.model, args.input, explain=bool(args.explain), outside_domain=args.outside_domain,
                              key=key)
    print(predict.json_lines(results) if args.json else predict.table(results))
    if args.explain:
        folder = predict.write_explanation(results, args.explain)
        if not args.json:
            print(predict.explanation(results))
        spatial = f"; where in the frames (Grad-CAM arrays and overlays) -> {folder}" if folder else ""
        print(f"predict: per-frame importance -> {args.explain}{spatial}", file=sys.stderr)
    duplicates = sum(r.rejected == DUPLICATE_INSTANCE for r in results)
    files = sum(not r.series_key for r in results)
    series = len(results) - files - duplicates
    outside = sum(r.rejected == predict.OUTSIDE_DOMAIN for r in results)
    failed = sum(r.rejected not in (None, DUPLICATE_INSTANCE, predict.OUTSIDE_DOMAIN) for r in results if r.series_key)
    if files:
        print(f"predict: {files} file(s) are no part of a series and were not read (reasons above)",
              file=sys.stderr)
    if outside:
        print(f"predict: {outside} of {series} series are outside the model's training domain and were not "
              "predicted (reasons above)", file=sys.stderr)
    if duplicates:
        print(f"predict: {duplicates} file(s) repeat another file's instance; one copy of each was used "
              "(reasons above)", file=sys.stderr)
    if failed:
        print(f"predict: {failed} of {series} series could not be read (reasons above)", file=sys.stderr)
    return 1 if failed or outside or not series else 0


def cmd_stream(args: argparse.Namespace, _: list[str]) -> int:
    import json

    import numpy as np

    from ..components.predict.stream import stream

    latencies, skipped, events = [], 0, 0
    for out in stream(args.model, args.input, realtime=args.realtime, follow=args.follow,
                      idle_timeout_s=args.idle_timeout, outside_domain=args.outside_domain):
        print(json.dumps(out.to_json()), flush=True)
        skipped += out.rejected is not None
        events += len(out.events)
        if out.rejected is None:
            latencies.append(out.latency_ms)
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"stream: {len(latencies)} frame(s), latency p50 {p50:.1f} ms, p99 {p99:.1f} ms (decode, preprocessing "
              f"and the step); {events} event(s) confirmed", file=sys.stderr)
    if skipped:
        print(f"stream: {skipped} frame(s) could not be read and were skipped (reasons above)", file=sys.stderr)
    return 0 if latencies else 1


def cmd_compile(args: argparse.Namespace, _: list[str]) -> int:
    from .kfp_pipeline import IMAGE, compile_pipeline

    path = compile_pipeline(_config(args), args.kfp, serving_dir=args.serving_dir or "", image=args.image or IMAGE)
    print(f"compile: KFP v2 pipeline -> {path} (parameters: config, serving_dir; image {args.image or IMAGE})")
    return 0


def _foreground(command: list[str], env: dict[str, str], failure: Callable[[str], str | None] | None = None) -> int:
    """Runs a Flower server process until it ends or this one is stopped (SIGTERM, Ctrl-C),
    which stops it too. With `failure`, its output passes through this process's stdout and
    an end that `failure` names (from the output) is a one-line MedseqError."""
    import signal
    import subprocess
    import threading

    from .errors import MedseqError

    piped = failure is not None
    child = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE if piped else None,
                             stderr=subprocess.STDOUT if piped else None)
    kept: list[str] = []

    def relay() -> None:  # in a thread: processes the child starts may hold its output open after it ends
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            kept.append(line)
            del kept[:-200]

    relaying = threading.Thread(target=relay, daemon=True)
    if piped:
        relaying.start()

    def stop(signum: int, _: object) -> None:
        child.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        child.terminate()
        return child.wait()
    if piped:
        relaying.join(timeout=5.0)
    said = failure("".join(kept)) if failure is not None and code else None
    if said:
        raise MedseqError(said)
    return code


def cmd_federate(args: argparse.Namespace, _: list[str]) -> int:
    import json
    from pathlib import Path

    from ..components import federate
    from .errors import ConfigError

    tls = federate.Tls(args.tls_ca, args.tls_cert or "", args.tls_key or "") if args.tls_ca else None
    needed = {"link": ("state",), "site": ("superlink", "records", "out"), "run": ("superlink", "out"),
              "register": ("superlink", "public_key")}[args.role]
    missing = [f"--{name.replace('_', '-')}" for name in needed if not getattr(args, name)]
    if missing:
        raise ConfigError(f"federate {args.role}: expected {', '.join(missing)}")
    where = args.host if args.role == "link" else (args.superlink or "").rsplit(":", 1)[0]
    if tls is None and where not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        raise ConfigError(f"federate {args.role}: {where} is not this machine's loopback; expected TLS there "
                          f"(--tls-ca{', --tls-cert and --tls-key' if args.role == 'link' else ''})")
    if tls is not None and args.role == "link" and not (args.tls_cert and args.tls_key):
        raise ConfigError("federate link: expected --tls-cert and --tls-key with --tls-ca")
    if args.role == "link" and args.authenticate and tls is None:
        raise ConfigError("federate link: --authenticate proves each site's key over TLS; expected --tls-ca, "
                          "--tls-cert and --tls-key beside it")
    if args.role == "link":
        admits = "; registered sites only" if args.authenticate else ""
        print(f"federate: SuperLink on {args.host}:{args.port} ({'TLS' if tls else 'no TLS: loopback only'}{admits})",
              flush=True)
        return _foreground(federate.link_command(args.port, args.state, args.host, tls, args.authenticate),
                           federate.environment())
    if args.role == "register":
        node = federate.register(args.superlink, args.public_key, tls)
        print(f"federate: {args.public_key} registered at {args.superlink} (SuperNode {node}); the site joins with "
              "--auth-key and its private key")
        return 0
    if args.role == "site":
        from ..components.io.output_lock import claim

        command = federate.site_command(args.superlink, args.records, args.out, args.port, args.config or "", tls,
                                        args.auth_key or "")
        claim(args.out, "site ledger folder")  # the ledger appends to OUT/sent.jsonl: never to a file of the user's
        print(f"federate: site of {args.records} -> SuperLink {args.superlink}", flush=True)
        return _foreground(command, federate.environment(),
                           lambda log: federate.site_failure(log, args.superlink))
    model = federate.run(_config(args), args.superlink, args.out, tls)
    record = json.loads((Path(args.out) / federate.RECORD_FILE).read_text())
    print(f"federate: {len(record['rounds'])} round(s) over {len(record['sites'])} site(s) "
          f"({len(record['left_out'])} left out), {record['aggregator']} -> {model}")
    return 0


def cmd_run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from .runner import nothing_new, run_pipeline

    config = _config(args)
    if args.if_new:
        unchanged = nothing_new(config, args.out)
        if unchanged:
            print(f"run: {unchanged}; no run started")
            return 0
    result = run_pipeline(config, args.out, beam_args, start_from=args.start_from, only=args.only)
    if result.blessed:
        print(f"run: BLESSED; served model at {result.served}")
    else:
        print("run: NOT_BLESSED, nothing pushed: " + "; ".join(result.reasons))
    print(f"run: outputs in {result.run_dir}")
    return 0


def build_parser() -> _Parser:
    parser = _Parser(prog="medseq", description="DICOM series -> TFRecords -> CNN+LSTM classifier -> TF Serving. "
                     "Every command writes only into folders it owns (new, empty, or written by medseq before).")
    parser.add_argument("--version", action="version", version=f"medseq {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs (Beam, TensorFlow)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def add(name: str, func: Callable[..., int], help_text: str, config: bool = True) -> argparse.ArgumentParser:
        beam_note = (" Options this command does not know are Apache Beam's filesystem options (e.g. "
                     "--s3_endpoint_url), for records on an object store." if name == "train" else
                     " Options this command does not know are passed to Apache Beam (e.g. --runner=DataflowRunner)."
                     if name in BEAM_COMMANDS else "")
        p = sub.add_parser(name, help=help_text, description=help_text + beam_note)
        parser.commands[name] = p
        p.set_defaults(func=func)
        # Also after the command: `medseq convert ... -v` (SUPPRESS: absent, the top-level value stays).
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show library logs (Beam, TensorFlow)")
        if config:
            p.add_argument("--config", help="pipeline config YAML, laid over the shipped schemas/pipeline.yaml "
                           "(it changes only the keys it names)")
            p.add_argument("--print-config", action="store_true",
                           help="print the effective config of this command (shipped, --config, options) and exit")
        return p

    from ..components.synth.tasks import TASKS
    from .config import EXPORT_FORMATS, OFFERED_EXPORTS

    p = add("synth", cmd_synth, "Write synthetic DICOM studies and labels.csv.", config=False)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--patients", type=int, required=True, help="number of patients (some have two studies)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    p.add_argument("--out", required=True, help="writes OUT/dicom/... and OUT/labels.csv (cine_phase also "
                   "OUT/frame_labels.csv: the ED and ES frames of each clip)")
    p.add_argument("--small", action="store_true", help="small matrices (48-64 px) for committed samples")
    p.add_argument("--target", choices=("class", "value", "frames"), default="class",
                   help="value (cine_ef): labels.csv also gets an `ef` column, the ejection fraction in %% drawn "
                   "over 15-75 %% (train.target: value, train.value.column: ef); frames: cine_phase only, whose "
                   "frame_labels.csv `medseq run` then reads (train.target: frames)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="with --target value: Gaussian measurement noise on `ef`, in EF points (e.g. 3)")

    p = add("convert", cmd_convert, "Ingest: DICOM series -> sharded gzip TFRecords (Apache Beam).")
    p.add_argument("--input", required=True, help="folder or glob of DICOM files (local, gs://, s3://), or a "
                   "DICOMweb service root (https://host/dicom-web; ingest.dicomweb in --config: filters, "
                   "concurrency, retries; credentials from $MEDSEQ_DICOMWEB_TOKEN or $MEDSEQ_DICOMWEB_USER/_PASSWORD)")
    p.add_argument("--labels", required=True, help="CSV with a label column and one of series_instance_uid, "
                   "study_instance_uid, accession_number; for train.target: value the column train.value.column; "
                   "for train.target: frames a frame_labels.csv (a key column, frame or time_ms, label: an event "
                   "of train.frames.events)")
    p.add_argument("--out", required=True, help="writes OUT/{train,eval,test}/, rejected.jsonl, qc.json (a new or "
                   "empty folder, or one medseq wrote before: a folder holding other files is refused)")
    p.add_argument("--hash-key-file", help="secret key for the keyed hashes (else $MEDSEQ_HASH_KEY)")
    p.add_argument("--num-shards", type=int, help="shards per split (default: by size, 64 MB)")
    p.add_argument("--split", type=float, nargs=3, metavar=("TRAIN", "EVAL", "TEST"),
                   help="patient split fractions (default: ingest.split of the config; the shipped "
                   "config says 0.6 0.2 0.2, sized for the small sample set)")

    p = add("validate", cmd_validate, "Statistics and schema/leakage/skew checks over the records.")
    p.add_argument("--examples", required=True, help="the output folder of `medseq convert` (local or s3://)")
    p.add_argument("--out", required=True, help="writes stats.json, stats.txt, anomalies.json (local or s3://)")
    p.add_argument("--schema", help="tensorflow_metadata Schema text proto (default: schemas/record_schema.pbtxt)")
    p.add_argument("--infer-schema", action="store_true", default=None,
                   help="also write OUT/schema.pbtxt inferred from train (validate.infer_schema)")
    p.add_argument("--baseline", help="the output folder of `medseq validate` on the training records (or its "
                   "stats.json): EXAMPLES are a new batch, checked for drift from its train split by the schema's "
                   "drift_comparator thresholds (and against the schema), not as a training set's splits")

    p = add("train", cmd_train, "Train the TimeDistributed CNN + LSTM under tf.distribute, evaluate after "
            "every epoch and export the best epoch. After a crash or a kill, the same command resumes at the "
            "last checkpoint and ends as if never stopped.")
    p.add_argument("--examples", required=True, help="the output folder of `medseq convert` (on s3://: copied "
                   "into OUT/records first, with Beam's --s3_* options)")
    p.add_argument("--out", required=True,
                   help="writes model/, history.json, checkpoints/, logs/ (TensorBoard); resumes from checkpoints/")
    p.add_argument("--epochs", type=int, help="train.epochs of the config (a resumed job trains up to it)")
    p.add_argument("--batch-size", type=int, help="train.batch_size of the config (per replica)")
    p.add_argument("--strategy", choices=("default", "mirrored", "multi_worker_mirrored", "tpu"))

    p = add("evaluate", cmd_evaluate, "TFMA evaluation against thresholds and the served model.")
    p.add_argument("--examples", required=True, help="the output folder of `medseq convert` (eval split; on s3://: "
                   "qc.json and the eval split are copied into OUT/records first, with Beam's --s3_* options)")
    p.add_argument("--model", required=True, help="candidate SavedModel")
    p.add_argument("--baseline", help="SavedModel now served (change thresholds apply); default: the newest "
                   "version in --serving-dir, if given")
    p.add_argument("--serving-dir", help="TF Serving base folder whose newest version is the baseline")
    p.add_argument("--model-name", help="model name inside --serving-dir (default: push.model_name)")
    p.add_argument("--eval-config", help="TFMA EvalConfig text proto (default: schemas/eval_config.pbtxt for two "
                   "classes, schemas/eval_config_multiclass.pbtxt for more)")
    p.add_argument("--out", required=True, help="writes metrics/, report.html, BLESSED or NOT_BLESSED (with Beam's "
                   "--temp_location, TFMA's workers write there and metrics/ is copied back)")

    p = add("push", cmd_push, "Copy the BLESSED model into the next integer version for TF Serving, with "
            "synthetic warm-up requests and a model card; keep the newest push.keep_versions versions.")
    p.add_argument("--model", required=True, help="SavedModel to push (the one the evaluation blessed)")
    p.add_argument("--evaluation", required=True, help="the output folder of `medseq evaluate`")
    p.add_argument("--serving-dir", required=True, help="TF Serving base folder (model_name/version inside)")
    p.add_argument("--model-name", help="default: push.model_name of the config (medseq)")
    p.add_argument("--keep-versions", type=int, help="default: push.keep_versions of the config (3); 0 keeps all")
    p.add_argument("--formats", nargs="+", metavar="FORMAT:PRECISION",
                   help="edge artifacts shipped beside the SavedModel in assets.extra/edge/, each behind its parity "
                   f"gate (default: push.formats, none): {OFFERED_EXPORTS}")
    p.add_argument("--examples", help="the output folder of `medseq convert`: its eval split gates the artifacts "
                   "(needed with --formats)")

    p = add("export", cmd_export, "Convert a trained model to LiteRT (.tflite) or ONNX for edge and browser "
            "runtimes (built-in ops only); each artifact is written only if its parity gate passes on the eval "
            "split under its own runtime (max |dp| <= 1e-5 fp32, 1e-3 fp16, 1e-2 dynamic_int8; AUC change >= "
            "-0.01). Exit status 1 if any was refused.")
    p.add_argument("--model", required=True, help="the output folder of `medseq train` (or a SavedModel it wrote)")
    p.add_argument("--examples", required=True, help="the output folder of `medseq convert` (eval split)")
    p.add_argument("--format", nargs="+", required=True, choices=sorted(EXPORT_FORMATS), help="litert, onnx")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "dynamic_int8"],
                   help="default fp32; onnx offers fp32 only")
    p.add_argument("--out", required=True, help="writes model_<precision>.tflite|.onnx, medseq_spec.json, "
                   "medseq_export.json")

    p = add("predict", cmd_predict, "Predict every series under a raw DICOM folder with the shared preprocessing.",
            config=False)
    p.add_argument("--model", required=True, help="SavedModel written by `medseq train` or `push`, or a .tflite "
                   "or .onnx file written by `medseq export` (medseq_spec.json beside it)")
    p.add_argument("--input", required=True, help="folder of DICOM files, any nesting (one or more series)")
    p.add_argument("--json", action="store_true", help="one JSON line per series instead of a table (a value "
                   "model: value and units; a frames model: frame_values and each event's frame and ms; an anomaly "
                   "model: label, normal or anomalous, and anomaly_score)")
    p.add_argument("--explain", metavar="FILE", nargs="?", const="explain.json",
                   help="which frames mattered (temporal occlusion), printed and written to FILE (default "
                   "explain.json), and where in them (Grad-CAM: an array and a PNG overlay per series in "
                   "FILE's stem + _attribution/)")
    p.add_argument("--outside-domain", choices=("refuse", "warn"), default="refuse",
                   help="a series whose modality, frame axis or colour the model was never trained on: refused "
                   "as outside_domain (default), or predicted and flagged (warn); unusual values are flagged")
    p.add_argument("--hash-key-file", help="the secret key of the keyed hashes, so that series_key matches the "
                   "records' (else $MEDSEQ_HASH_KEY, else a key of this run)")

    p = add("stream", cmd_stream, "Read a live series frame by frame with a causal model (train.causal): each frame "
            "through ingest's preprocessing and one step of the model, its state carried to the next; one JSON line "
            "per frame (frame, time_ms, frame_value, latency_ms, step_ms, and the events it confirms).",
            config=False)
    p.add_argument("--model", required=True, help="a causal SavedModel written by `medseq train` or `push`, or a "
                   "step artifact of `medseq export` (model_<precision>_step.tflite or .onnx; the whole-series "
                   "file names it too)")
    p.add_argument("--input", required=True, help="a multi-frame DICOM file, or a folder of one series' files "
                   "(read in their geometric or temporal order); with --follow a folder being written")
    p.add_argument("--realtime", action="store_true", help="pace the frames by their Frame Time / Trigger Time, "
                   "as the clip was recorded")
    p.add_argument("--follow", action="store_true", help="read files as they appear in --input (each once its "
                   "size stops changing), until --idle-timeout seconds pass without a new one")
    p.add_argument("--idle-timeout", type=float, default=10.0, help="with --follow: seconds without a new file "
                   "that end the stream (default 10)")
    p.add_argument("--outside-domain", choices=("refuse", "warn"), default="refuse",
                   help="a series whose modality, frame axis or colour the model was never trained on: refused "
                   "(default), or streamed (warn)")

    p = add("compile", cmd_compile, "Compile the config's stages into a Kubeflow Pipelines (KFP v2) pipeline: one "
            "component per stage, KFP artifacts between them, push only when BLESSED, the input fingerprinted first so "
            "KFP's cache reuses every step until new data arrives, a run record as KFP metadata "
            "(pip install 'medseq[kfp]').")
    p.add_argument("--kfp", required=True, metavar="PIPELINE.yaml", help="the pipeline YAML to write (checked with "
                   "kfp's own loader)")
    p.add_argument("--serving-dir", help="the TF Serving base folder evaluate compares with and push writes into "
                   "(the pipeline's serving_dir parameter; a path the steps can reach)")
    p.add_argument("--image", help="the container image the steps run in, holding medseq with its kfp extra "
                   "(default medseq:latest)")

    p = add("federate", cmd_federate, "Federated training through Flower (pip install 'medseq[federated]'): `link` "
            "starts the coordinator's SuperLink, `register` admits a site's key to it, `site` a site's SuperNode on "
            "its own records, `run` a federated "
            "run whose model (OUT/model) is a normal candidate for evaluate and push; only weights and aggregate "
            "metrics leave a site.")
    p.add_argument("role", choices=("link", "register", "site", "run"), help="link: the coordinator's SuperLink; "
                   "register: admit a site's public key to it; site: one site's SuperNode; run: train on the "
                   "SuperLink's sites")
    p.add_argument("--superlink", metavar="HOST:PORT", help="register, site, run: the SuperLink's address")
    p.add_argument("--records", help="site: the site's own `medseq convert` output")
    p.add_argument("--out", help="site: the folder of its ledger (sent.jsonl: every message it sent); run: the "
                   "federated model (OUT/model) and the run's record (OUT/federation.json)")
    p.add_argument("--state", help="link: the SuperLink's state folder")
    p.add_argument("--host", default="127.0.0.1", help="link: the address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9092, help="link: its port (default 9092); site: the SuperNode's "
                   "own local port (use one per site on one machine)")
    p.add_argument("--tls-ca", help="the CA certificate every side trusts (without: no TLS, for loopback only)")
    p.add_argument("--tls-cert", help="link: the SuperLink's TLS certificate")
    p.add_argument("--tls-key", help="link: the SuperLink's TLS key")
    p.add_argument("--authenticate", action="store_true", help="link (with TLS): admit only sites whose public "
                   "key was registered (federate register), each proving it holds the private key")
    p.add_argument("--public-key", help="register: a site's public key (OpenSSH EC, e.g. site-key.pub from "
                   "ssh-keygen -t ecdsa -b 384 -N '' -f site-key)")
    p.add_argument("--auth-key", help="site: its private key (OpenSSH EC) whose public key the coordinator "
                   "registered")

    p = add("run", cmd_run, "Run every stage into one run folder: by default on synthetic cine MR that the "
            "shipped config's `synth` section generates there; `input`/`labels` in a --config for your DICOM.")
    p.add_argument("--out", default="runs/latest", help="run folder (default: runs/latest): a new or empty folder, "
                   "or one medseq wrote before")
    from .runner import STAGES

    which = p.add_mutually_exclusive_group()
    which.add_argument("--from", dest="start_from", choices=STAGES,
                       help="rerun this stage and every later one (earlier ones are reused from OUT)")
    which.add_argument("--only", choices=STAGES, help="run this one stage on the outputs already in OUT")
    p.add_argument("--if-new", action="store_true", help="start only if the input holds something the last ingest "
                   "in OUT did not read (a DICOMweb input is asked which series it lists, nothing is fetched); "
                   "else exit 0 with one line: for a schedule or a new-data trigger")
    return parser


def _quiet_libraries(verbose: bool) -> None:
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    from .console import BeamJobMessages, quiet_beam_job_threads

    logging.getLogger().addFilter(BeamJobMessages())
    quiet_beam_job_threads()
    import warnings

    # The libraries' own deprecation and usage notes, not the user's: anything else still shows.
    for library in NOISY_LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{library}(\..*)?")


def _relax_required(parser: _Parser) -> None:
    """--print-config needs no inputs: the commands' required options become optional."""
    for sub_parser in parser.commands.values():
        for action in sub_parser.required:
            action.required = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--print-config" in argv:
        _relax_required(parser)
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "print_config", False):
        try:
            return print_config(args)
        except MedseqError as exc:
            print(f"medseq {args.command}: {exc}", file=sys.stderr)
            return exc.exit_code
    _quiet_libraries(args.verbose)
    if from_command_line and not args.verbose:
        from .console import filter_native_logs

        filter_native_logs()
    sub_parser = parser.commands[args.command]
    if args.command in BEAM_COMMANDS:
        beam_args = split_beam_args(sub_parser, rest)
    elif rest:
        sub_parser.error(f"unrecognized arguments: {' '.join(rest)}")
    else:
        beam_args = []
    try:
        return int(args.func(args, beam_args))
    except MedseqError as exc:
        print(f"medseq {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:
        print(f"medseq {args.command}: {InputError(f'not found: {exc.filename}')}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable output, a full disk, a file where a folder was expected
        where = f" {exc.filename}" if exc.filename else ""
        print(f"medseq {args.command}: cannot read or write{where}: {exc.strerror or type(exc).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medseq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
