"""`medseq convert`: DICOM series -> sharded gzip TFRecords, rejected.jsonl and qc.json.

The work is in `executor` (the Beam job), `steps` (what each of its stages does, without
Beam), `transforms` (the steps as the job's DoFns) and `in_process` (the steps called
directly, for a small local input and no Beam option: no Beam import at all; `medseq
predict` runs its steps through it too). Files on any filesystem, keyed hashes, records
and Beam pipelines come from the shared `medseq.components.io`, the DICOM handling from
`medseq.components.preprocessing`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ...pipeline.config import PipelineConfig
from ...pipeline.contract import BeamArgs, IngestInputs
from ..io import deid, storage
from ..io.beam import default_beam_args
from ..io.remote_errors import on_filesystems
from ..io.storage import absolute
from . import dicomweb
from .executor import IngestOutputs, run_job
from .graph import Source
from .sources import FilesSource

__all__ = ["IngestInputs", "IngestOutputs", "run"]


# Below this many input files one in-process worker, which imports no Beam, beats a
# pipeline with a worker process per core. The pipeline's fixed cost (Beam's import,
# starting workers, its stages) is about 10 s on 2 cores: full-size cine, 1,049 files
# 6.8 against 16.8 s, 2,200 files 10.7 against 19.6 s; it pays for itself near 7,500
# files on 2 cores and near 3,000 on 8 (a core converts about 270 files a second).
SMALL_INPUT_FILES = 3000


def _fewer_files_than(input_path: str, limit: int) -> bool:
    """A local folder holding fewer than `limit` files (counting stops at `limit`)."""
    if storage.remote(input_path) or any(ch in input_path for ch in "*?[") or not os.path.isdir(input_path):
        return False
    seen = 0
    for _, _, names in os.walk(input_path):
        seen += len(names)
        if seen >= limit:
            return False
    return True


def run(config: PipelineConfig, inputs: IngestInputs, out: str | Path, beam_args: BeamArgs = ()) -> IngestOutputs:
    """Converts `inputs.input` (labels in `inputs.labels`) into records under `out`: a
    folder or glob, or a DICOMweb service root whose series the job fetches first."""
    key = inputs.key if inputs.key is not None else deid.load_key(config.ingest.hash_key_file)
    given = [*config.ingest.beam_args, *beam_args]
    out_path = absolute(str(out))
    paths = [p for p in (inputs.input, inputs.labels, out_path, config.ingest.dicomweb.cache_dir or "")
             if p and not dicomweb.is_dicomweb(p)]
    with on_filesystems(given, *paths):
        if not dicomweb.is_dicomweb(inputs.input):
            input_path = absolute(inputs.input)
            small = _fewer_files_than(input_path, SMALL_INPUT_FILES)
            return _convert(config, FilesSource(input_path), absolute(inputs.labels), out_path, key, given, small)
        return _fetch_and_convert(config, inputs, out_path, key, given)


def _fetch_and_convert(config: PipelineConfig, inputs: IngestInputs, out_path: str, key: bytes,
                       given: list[str]) -> IngestOutputs:
    with dicomweb.archive_source(inputs.input, config.ingest.dicomweb, key, out_path) as source:
        small = source.instances < SMALL_INPUT_FILES and not storage.remote(source.cache)
        outputs = _convert(config, source, absolute(inputs.labels), out_path, key, given, small)
        dicomweb.write_manifest(out_path, source.manifest)
        source.prune()
    return dataclasses.replace(outputs, fetch=source.summary)


def _convert(config: PipelineConfig, source: Source, labels: str, out: str, key: bytes, given: list[str],
             small: bool) -> IngestOutputs:
    # A small local input and no Beam option: no pipeline to build (in_process.py), no Beam imported.
    args = None if small and not given else default_beam_args(given, small)
    record = {"input": "<input>", "labels": "<labels>"}  # paths may name patients; not recorded
    return run_job(source, labels, out, key, config.preprocess, config.ingest, args, record,
                   config.train.records_target, config.train.value, config.train.frames.events)
