"""The ingest Beam job: match -> headers -> group by series -> records -> shards.

Everything is written under a staging folder inside OUT and moved into place only
when the job has succeeded (qc.json last), so a reader never sees half an output.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medseq.components.ingest import storage
from medseq.components.ingest.in_process import run_in_process
from medseq.components.ingest.output_lock import output_lock
from medseq.components.ingest.storage import open_binary
from medseq.pipeline import features as F
from medseq.pipeline.config import IngestConfig, PreprocessConfig, to_dict
from medseq.pipeline.errors import InputError

if TYPE_CHECKING:
    import apache_beam as beam

log = logging.getLogger("medseq.ingest")
LABEL_COLUMNS = ("series_instance_uid", "label")
CLASS_NAME = re.compile(r"^[\w][\w .-]{0,63}$")  # class names travel into file names, configs and reports


@dataclass(frozen=True)
class IngestOutputs:
    out: str
    records: dict[str, int]
    rejected: int
    classes: tuple[str, ...]
    qc: dict[str, Any]


def read_labels(path: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """labels.csv -> ({series uid: label}, sorted class names)."""
    try:
        with open_binary(path) as f:
            raw = f.read()
    except OSError:
        raise InputError(f"labels file not found or not readable: {path}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: expected UTF-8 text, found a byte that is not (0x{raw[exc.start]:02x} at byte "
                         f"{exc.start}); save the labels as UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not set(LABEL_COLUMNS) <= {c.strip() for c in reader.fieldnames}:
        raise InputError(f"{path}: expected a CSV header with columns {','.join(LABEL_COLUMNS)}, "
                         f"found {','.join(reader.fieldnames or [])!r}")
    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        uid, label = row["series_instance_uid"], row["label"]
        if not (uid and label):
            continue
        if not CLASS_NAME.match(label):
            raise InputError(f"{path}: line {reader.line_num}: expected a class name of letters, digits, '_', '-', "
                             f"'.' or spaces, found {label[:40]!r}")
        if uid in labels and labels[uid] != label:  # the line numbers, never the UID: it identifies
            raise InputError(f"{path}: lines {first_line[uid]} and {reader.line_num} give one series two labels "
                             f"({labels[uid]!r} and {label!r}); expected one label per series")
        labels[uid] = label
        first_line.setdefault(uid, reader.line_num)
    if not labels:
        raise InputError(f"{path}: no labeled series (expected rows of series_instance_uid,label)")
    return labels, tuple(sorted(set(labels.values())))


def input_pattern(input_path: str) -> tuple[str, str]:
    """(glob pattern, root) for a folder or a glob, on any Beam filesystem."""
    if any(ch in input_path for ch in "*?["):
        first = min(i for i, ch in enumerate(input_path) if ch in "*?[")
        root = input_path[:first].rsplit("/", 1)[0]  # the folder above the first wildcard
        return input_path, root
    if not storage.exists(input_path):
        raise InputError(f"input not found: {input_path} (expected a folder or a glob of DICOM files)")
    root = input_path.rstrip("/")
    return f"{root}/**", root


def _require_files(pattern: str, input_path: str) -> None:
    """Fails early, in one line, when the input matches no file at all (one listing entry)."""
    try:
        found = storage.match(pattern, limit=1)
    except Exception:  # noqa: BLE001 - Beam raises for an empty glob on some filesystems
        found = []
    if not found:
        raise InputError(f"no files found in {input_path} (expected DICOM files in it or matching it)")


def build(pipeline: beam.Pipeline, pattern: str, root: str, staging: str, key: bytes,
          labels: dict[str, str], classes: tuple[str, ...], preprocess: PreprocessConfig,
          ingest: IngestConfig) -> None:
    """Adds the ingest transforms to `pipeline`, writing under `staging`."""
    import apache_beam as beam
    from apache_beam.io import fileio

    from medseq.components.ingest.transforms import (
        BuildRecord,
        ReadHeader,
        Record,
        RejectedRow,
        WriteShard,
        shard_of,
    )

    headers = (
        pipeline
        | "MatchFiles" >> fileio.MatchFiles(pattern)
        | "FilePaths" >> beam.Map(lambda m: m.path)
        # The match is one element's fan-out: without a reshuffle every header read would
        # run in the bundle (and worker) that listed the files.
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadHeaders" >> beam.ParDo(ReadHeader(root, key, staging=staging))
        .with_outputs(ReadHeader.REJECTED, main="headers")
    )
    built = (
        headers.headers
        | "GroupBySeries" >> beam.GroupByKey()
        | "BuildRecords" >> beam.ParDo(BuildRecord(root, key, labels, classes, preprocess, ingest.split,
                                                   staging=staging, decode_timeout_s=ingest.decode_timeout_s))
        .with_outputs(BuildRecord.REJECTED, BuildRecord.LABELED, main="records")
    )
    records = built.records
    sizes = (records | "RecordSizes" >> beam.Map(lambda r: (r.split, r.nbytes))
             | "SizePerSplit" >> beam.CombinePerKey(sum))
    shard_bytes = ingest.shard_size_mb * 2**20
    _ = (
        records
        | "AssignShards" >> beam.Map(shard_of, sizes=beam.pvalue.AsDict(sizes), num_shards=ingest.num_shards,
                                     shard_bytes=shard_bytes)
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShard(staging))
    )
    _ = (
        records | "IndexLines" >> beam.Map(Record.index_line)
        | "WriteIndex" >> beam.io.WriteToText(storage.join(staging, "_index"), file_name_suffix=".jsonl")
    )
    _ = (
        (headers[ReadHeader.REJECTED], built[BuildRecord.REJECTED])
        | "AllRejected" >> beam.Flatten()
        | "RejectedLines" >> beam.Map(RejectedRow.to_json)
        | "WriteRejected" >> beam.io.WriteToText(storage.join(staging, "_rejected"), file_name_suffix=".jsonl")
    )
    _ = built[BuildRecord.LABELED] | "WriteLabeled" >> beam.io.WriteToText(storage.join(staging, "_labeled"))


def _read_lines(prefix: str) -> list[str]:
    lines: list[str] = []
    for path in storage.files_starting(prefix):
        with open_binary(path) as f:
            lines.extend(line for line in f.read().decode().splitlines() if line)
    return sorted(lines)


def finalize(staging: str, out: str, classes: tuple[str, ...], config: dict[str, Any],
             labels_listed: int = 0) -> IngestOutputs:
    """Merges the side files into rejected.jsonl and qc.json, then swaps staging into OUT."""
    index = [json.loads(line) for line in _read_lines(storage.join(staging, "_index"))]
    labels_found = len(set(_read_lines(storage.join(staging, "_labeled"))))
    rejected_lines = _read_lines(storage.join(staging, "_rejected"))
    rejected = [json.loads(line) for line in rejected_lines]
    for split in F.SPLITS:
        storage.mkdirs(storage.join(staging, split)) if not storage.exists(storage.join(staging, split)) else None
    with storage.create(storage.join(staging, F.REJECTED_FILE)) as f:
        f.write("".join(line + "\n" for line in rejected_lines).encode())
    records = {s: sum(1 for r in index if r["split"] == s) for s in F.SPLITS}
    qc: dict[str, Any] = {
        "classes": list(classes),
        "records": records,
        "labels": {s: dict(sorted(Counter(r["label"] for r in index if r["split"] == s).items())) for s in F.SPLITS},
        "modalities": dict(sorted(Counter(r["modality"] for r in index).items())),
        "manufacturers": dict(sorted(Counter(r["manufacturer"] for r in index).items())),
        "rejected": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        # Every input file is accounted for: in a record, or on a line of rejected.jsonl.
        "files": {"in_records": sum(r["files"] for r in index), "rejected": sum(r["files"] for r in rejected)},
        # labels.csv rows whose series is in the input; the others name series not found.
        "labels_csv": {"rows": labels_listed, "found": labels_found, "not_found": labels_listed - labels_found},
        "config": config,
    }
    with storage.create(storage.join(staging, "qc.json.tmp")) as f:
        f.write(json.dumps(qc, indent=2, sort_keys=True).encode())
    storage.delete(storage.files_starting(storage.join(staging, "_")))
    trash = storage.join(out, f".medseq-old-{uuid.uuid4().hex[:8]}")
    storage.mkdirs(trash)
    # qc.json goes last: its presence marks a complete output.
    for name in (F.QC_FILE, *F.SPLITS, F.REJECTED_FILE):
        target = storage.join(out, name)
        if storage.exists(target):
            storage.rename(target, storage.join(trash, name))
    for name in (*F.SPLITS, F.REJECTED_FILE):
        storage.rename(storage.join(staging, name), storage.join(out, name))
    storage.rename(storage.join(staging, "qc.json.tmp"), storage.join(out, F.QC_FILE))
    storage.delete([trash, staging])
    return IngestOutputs(out, records, len(rejected), classes, qc)


def run_job(input_path: str, labels_path: str, out: str, key: bytes, preprocess: PreprocessConfig,
            ingest: IngestConfig, beam_args: list[str] | None, config_record: dict[str, Any]) -> IngestOutputs:
    """The job on Beam with `beam_args`, or, with None, its DoFns called in this process."""
    labels, classes = read_labels(labels_path)
    classes = ingest.classes or classes
    pattern, root = input_pattern(input_path)
    _require_files(pattern, input_path)
    with output_lock(out):
        storage.mkdirs(out) if not storage.exists(out) else None
        staging = storage.join(out, f".medseq-staging-{uuid.uuid4().hex[:8]}")
        if beam_args is None:
            run_in_process(pattern, root, staging, key, labels, classes, preprocess, ingest)
        else:
            import apache_beam as beam
            from apache_beam.options.pipeline_options import PipelineOptions

            with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
                build(pipeline, pattern, root, staging, key, labels, classes, preprocess, ingest)
        record = dict(config_record, preprocess=to_dict(preprocess), ingest=to_dict(ingest))
        return finalize(staging, out, classes, record, len(labels))
