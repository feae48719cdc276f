"""`medseq convert`: DICOM series -> sharded gzip TFRecords, rejected.jsonl and qc.json.

The work is in `executor` (the Beam job), `steps` (what each of its stages does, without
Beam), `transforms` (the steps as the job's DoFns) and `in_process` (the steps called
directly, for a small local input and no Beam option: no Beam import at all); `storage`
reads and writes local files itself and any other filesystem through Beam. The shared
DICOM handling is in `medseq.components.preprocessing`.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseq.components.ingest import deid
from medseq.components.ingest.executor import IngestOutputs, run_job
from medseq.pipeline.config import PipelineConfig
from medseq.pipeline.lean_beam import import_beam_without_optional_io

__all__ = ["IngestOutputs", "default_beam_args", "run"]


# Beam's DirectRunner is a switching runner: it first checks whether the Prism runner
# (a Go binary fetched on first use) could run the pipeline, and ends on the FnApiRunner.
# medseq names the FnApiRunner itself.
FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
# Below this many input files one in-process worker, which imports no Beam, beats a
# pipeline with a worker process per core. The pipeline's fixed cost (Beam's import,
# starting workers, its stages) is about 10 s on 2 cores: full-size cine, 1,049 files
# 6.8 against 16.8 s, 2,200 files 10.7 against 19.6 s; it pays for itself near 7,500
# files on 2 cores and near 3,000 on 8 (a core converts about 270 files a second).
SMALL_INPUT_FILES = 3000


def _fewer_files_than(input_path: str, limit: int) -> bool:
    """A local folder holding fewer than `limit` files (counting stops at `limit`)."""
    if "://" in input_path or any(ch in input_path for ch in "*?[") or not os.path.isdir(input_path):
        return False
    seen = 0
    for _, _, names in os.walk(input_path):
        seen += len(names)
        if seen >= limit:
            return False
    return True


def default_beam_args(beam_args: list[str] | tuple[str, ...], small_input: bool = False) -> list[str]:
    """Any runner's options pass through. Without a runner: the FnApiRunner, in-process
    for a small local input, else with one worker process per core."""
    args = list(beam_args)
    if any(a == "--runner" or a.startswith("--runner=") for a in args):
        return args
    if small_input:
        return [*args, f"--runner={FN_API_RUNNER}", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    return [*args, f"--runner={FN_API_RUNNER}", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={os.cpu_count() or 1}"]


def run(config: PipelineConfig, out: str | Path, key: bytes | None = None,
        beam_args: list[str] | tuple[str, ...] = ()) -> IngestOutputs:
    """Converts `config.input` (labels in `config.labels`) into records under `out`."""
    key = key if key is not None else deid.load_key(config.ingest.hash_key_file)
    given = [*config.ingest.beam_args, *beam_args]
    small = _fewer_files_than(config.input, SMALL_INPUT_FILES)
    # A small local input and no Beam option: no pipeline to build (in_process.py).
    args = None if small and not given else default_beam_args(given, small)
    if args is not None:  # Beam without the integrations a conversion never uses (about 1 s)
        import_beam_without_optional_io()
    record = {"input": "<input>", "labels": "<labels>"}  # paths may name patients; not recorded
    return run_job(config.input, config.labels, str(out), key, config.preprocess, config.ingest, args, record)
