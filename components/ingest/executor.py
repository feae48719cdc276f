"""Running the ingest job (graph.py) on Beam or in this process, and its output's finish.

Everything is written under a staging folder inside OUT and moved into place only
when the job has succeeded (qc.json last), so a reader never sees half an output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...pipeline import features as F
from ...pipeline.config import IngestConfig, PreprocessConfig, ValueConfig, to_dict
from ..io import storage
from ..io.beam import pipeline as beam_pipeline
from ..io.output_lock import output_lock
from ..preprocessing import pixel_phi
from .graph import INDEX, LABELED_LINES, REJECTED_LINES, Source, ingest_graph
from .in_process import LocalGraph
from .labels import CLASS, FRAMES, VALUE, LabelTable, read_labels

if TYPE_CHECKING:
    import apache_beam as beam

log = logging.getLogger("medseq.ingest")


@dataclass(frozen=True)
class IngestOutputs:
    out: str
    records: dict[str, int]
    rejected: int
    classes: tuple[str, ...]
    qc: dict[str, Any]
    fetch: dict[str, Any] | None = None  # a DICOMweb input: what its fetch did (dicomweb._summary)


class BeamGraph:
    """`graph.ingest_graph` as a Beam pipeline: each step a transform under its label."""

    spills_headers = True  # a local runner holds a GroupByKey's elements in its main process
    parallel = True

    def __init__(self, pipeline: beam.Pipeline, filesystem_args: list[str] | tuple[str, ...] = ()) -> None:
        import apache_beam as beam

        # The job's options for the DoFns that touch a remote path (io.dofns.FilesystemDoFn).
        self.beam, self.pipeline, self.filesystem_args = beam, pipeline, tuple(filesystem_args)

    def create(self, label: str, items: list[Any]) -> Any:
        return self.pipeline | label >> self.beam.Create(items)

    def files(self, label: str, pattern: str) -> Any:
        from .transforms import MatchDoFn

        return self.pipeline | "Pattern" >> self.beam.Create([pattern]) | label >> self.beam.ParDo(
            MatchDoFn(self.filesystem_args))

    def spread(self, label: str, items: Any) -> Any:
        return items | label >> self.beam.Reshuffle()

    def pardo(self, label: str, items: Any, step: Any, tags: tuple[str, ...] = ()) -> tuple[Any, ...]:
        from .transforms import StepDoFn

        out = items | label >> self.beam.ParDo(StepDoFn(step, self.filesystem_args)).with_outputs(*tags, main="main")
        return (out.main, *(out[t] for t in tags))

    def map(self, label: str, items: Any, fn: Callable[..., Any], **kwargs: Any) -> Any:
        return items | label >> self.beam.Map(fn, **kwargs)

    def group(self, label: str, pairs: Any) -> Any:
        return pairs | label >> self.beam.GroupByKey()

    def sum_per_key(self, label: str, pairs: Any) -> Any:
        return pairs | label >> self.beam.CombinePerKey(sum)

    def as_dict(self, pairs: Any) -> Any:
        return self.beam.pvalue.AsDict(pairs)

    def flatten(self, label: str, collections: Iterable[Any]) -> Any:
        return tuple(collections) | label >> self.beam.Flatten()

    def write_lines(self, label: str, lines: Any, prefix: str) -> None:
        from ..io.dofns import WriteLinesDoFn

        _ = lines | label >> self.beam.ParDo(WriteLinesDoFn(prefix, self.filesystem_args))


OUTPUT_NAMES = (F.QC_FILE, *F.SPLITS, F.REJECTED_FILE)  # what ingest writes in OUT; nothing else there is touched


def _target_record(labels: LabelTable, value: ValueConfig | None) -> dict[str, Any]:
    """qc.json's `target`: what the records answer (a value: its column, units, range;
    frames: the events, which are qc.json's `classes` too)."""
    if labels.target == CLASS:
        return {"kind": CLASS}
    if labels.target == FRAMES:
        return {"kind": FRAMES, "events": list(labels.classes)}
    value = value or ValueConfig()
    return {"kind": VALUE, "column": value.column, "units": value.units,
            "range": list(value.range) if value.range else None}


def value_statistics(values: list[float]) -> dict[str, float | int]:
    """count, mean, std, min, max of a split's values (qc.json `targets`)."""
    if not values:
        return {"count": 0}
    x = np.asarray(values, np.float64)
    return {"count": len(x), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "max": float(x.max())}


def _label_counts(labels: list[str], kind: str) -> dict[str, int]:
    if kind == VALUE:
        return {}
    if kind == FRAMES:
        return dict(sorted(Counter(e for label in labels for e in label.split(",")).items()))
    return dict(sorted(Counter(labels).items()))


def merge_side_files(staging: str, classes: tuple[str, ...], config: dict[str, Any],
                     labels_listed: int = 0, target: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    """Merges the job's side files into rejected.jsonl and qc.json.tmp inside `staging`:
    (qc, rejected lines). OUT is not touched."""
    target = target or {"kind": CLASS}
    index = [json.loads(line) for line in storage.read_lines(storage.join(staging, INDEX))]
    labels_found = len(set(storage.read_lines(storage.join(staging, LABELED_LINES))))
    rejected_lines = storage.read_lines(storage.join(staging, REJECTED_LINES))
    rejected = [json.loads(line) for line in rejected_lines]
    for split in F.SPLITS:
        storage.mkdirs(storage.join(staging, split)) if not storage.exists(storage.join(staging, split)) else None
    with storage.create(storage.join(staging, F.REJECTED_FILE)) as f:
        f.write("".join(line + "\n" for line in rejected_lines).encode())
    records = {s: sum(1 for r in index if r["split"] == s) for s in F.SPLITS}
    qc: dict[str, Any] = {
        "classes": list(classes),
        "records": records,
        "target": target,
        # Records per class; for frames, key frames per event.
        "labels": {s: _label_counts([r["label"] for r in index if r["split"] == s], target["kind"])
                   for s in F.SPLITS},
        "modalities": dict(sorted(Counter(r["modality"] for r in index).items())),
        "manufacturers": dict(sorted(Counter(r["manufacturer"] for r in index).items())),
        "colours": dict(sorted(Counter(r.get("colour", "grey") for r in index).items())),  # of the source pixels
        "rejected": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        # Every input file is accounted for: in a record, or on a line of rejected.jsonl.
        "files": {"in_records": sum(r["files"] for r in index), "rejected": sum(r["files"] for r in rejected)},
        # labels.csv rows whose series is in the input; the others name series not found.
        "labels_csv": {"rows": labels_listed, "found": labels_found, "not_found": labels_listed - labels_found},
        "config": config,
    }
    if target["kind"] == VALUE:  # the values of each split, as validate and train read them
        qc["targets"] = {s: value_statistics([float(r["label"]) for r in index if r["split"] == s]) for s in F.SPLITS}
    if target["kind"] == FRAMES:  # the output frames with a target, per split
        qc["frame_labels"] = {s: {"labeled_frames": sum(r.get("labeled_frames", 0) for r in index if r["split"] == s),
                                  "valid_frames": sum(r["valid_frames"] for r in index if r["split"] == s)}
                              for s in F.SPLITS}
    four_d = [r["four_d"] for r in index if "four_d" in r]
    if four_d:  # which attribute ordered the times of each 4-D series (one count per series)
        qc["four_d"] = {"records": len(four_d), "series": sum(p == 0 for p, _, _ in four_d),
                        "time_attributes": dict(sorted(Counter(a for p, _, a in four_d if p == 0).items()))}
    # What ingest.pixel_phi did: the records it let in by each decision, the series it kept out.
    qc["pixel_phi"] = {"records": {d: sum(d in r.get("pixel_phi", ()) for r in index) for d in pixel_phi.DECISIONS},
                       "rejected": {c: qc["rejected"].get(c, 0) for c in pixel_phi.REJECTIONS}}
    with storage.create(storage.join(staging, "qc.json.tmp")) as f:
        f.write(json.dumps(qc, indent=2, sort_keys=True).encode())
    storage.delete(storage.files_starting(storage.join(staging, "_")))
    return qc, len(rejected)


def swap_into_place(staging: str, out: str) -> None:
    """The staged outputs replace ingest's previous ones in OUT by renames, qc.json last
    (its presence marks a complete output). Only OUTPUT_NAMES are moved: a user's other
    files in OUT stay. A failure midway puts the previous outputs back."""
    trash = storage.join(out, f".medseq-old-{uuid.uuid4().hex[:8]}")
    storage.mkdirs(trash)
    moved: list[str] = []
    placed: list[str] = []
    try:
        for name in OUTPUT_NAMES:
            target = storage.join(out, name)
            if storage.exists(target):
                storage.rename(target, storage.join(trash, name))
                moved.append(name)
        for name in (*F.SPLITS, F.REJECTED_FILE):
            storage.rename(storage.join(staging, name), storage.join(out, name))
            placed.append(name)
        storage.rename(storage.join(staging, "qc.json.tmp"), storage.join(out, F.QC_FILE))
    except BaseException:
        with contextlib.suppress(Exception):
            for name in placed:
                storage.rename(storage.join(out, name), storage.join(staging, name))
            for name in moved:
                storage.rename(storage.join(trash, name), storage.join(out, name))
            storage.delete([trash])
        raise
    storage.delete([trash])


def run_job(source: Source, labels_path: str, out: str, key: bytes, preprocess: PreprocessConfig,
            ingest: IngestConfig, beam_args: list[str] | None, config_record: dict[str, Any],
            target: str = CLASS, value: ValueConfig | None = None,
            events: tuple[str, ...] = ("ed", "es")) -> IngestOutputs:
    """The job on Beam with `beam_args`, or, with None, its steps called in this process,
    over `source`'s files (sources.FilesSource, dicomweb.DicomwebSource); `target`, `value`
    and `events`: what labels.csv answers (train.target, train.value, train.frames)."""
    labels = read_labels(labels_path, target, value, events)
    if target == CLASS and ingest.classes:
        labels = dataclasses.replace(labels, classes=ingest.classes)
    classes = labels.classes
    source.check()
    with output_lock(out, "ingest output", (*OUTPUT_NAMES, F.FETCH_MANIFEST_FILE)):
        staging = storage.join(out, f".medseq-staging-{uuid.uuid4().hex[:8]}")
        try:  # a failed or killed job, or a full disk while merging, leaves no staging; OUT is as it was
            if beam_args is None:
                LocalGraph.run(ingest_graph, source, staging, key, labels, preprocess, ingest)
            else:
                remote = storage.remote(source.root) or storage.remote(staging)
                with beam_pipeline(beam_args) as pipeline:
                    graph = BeamGraph(pipeline, beam_args if remote else ())
                    ingest_graph(graph, source, staging, key, labels, preprocess, ingest)
            source.done(staging)  # before the merge removes the job's side files
            record = dict(config_record, preprocess=to_dict(preprocess),
                          ingest={**to_dict(ingest), "dicomweb": ingest.dicomweb.selection()})
            qc, rejected = merge_side_files(staging, classes, record, labels.rows, _target_record(labels, value))
            swap_into_place(staging, out)
        finally:
            with contextlib.suppress(Exception):
                if storage.exists(staging):
                    storage.delete([staging])
        return IngestOutputs(out, qc["records"], rejected, classes, qc)
