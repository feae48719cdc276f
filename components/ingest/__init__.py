"""`medseq convert`: DICOM series -> sharded gzip TFRecords, rejected.jsonl and qc.json.

The work is in `executor` (the Beam job) and `transforms` (its DoFns); the shared
DICOM handling is in `medseq.components.preprocessing`.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseq.components.ingest import deid
from medseq.components.ingest.executor import IngestOutputs, run_job
from medseq.pipeline.config import PipelineConfig

__all__ = ["IngestOutputs", "default_beam_args", "run"]


def default_beam_args(beam_args: list[str] | tuple[str, ...]) -> list[str]:
    """Any runner's options pass through; without a runner, DirectRunner with one worker
    process per core."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args += ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                 f"--direct_num_workers={os.cpu_count() or 1}"]
    return args


def run(config: PipelineConfig, out: str | Path, key: bytes | None = None,
        beam_args: list[str] | tuple[str, ...] = ()) -> IngestOutputs:
    """Converts `config.input` (labels in `config.labels`) into records under `out`."""
    key = key if key is not None else deid.load_key(config.ingest.hash_key_file)
    args = default_beam_args([*config.ingest.beam_args, *beam_args])
    record = {"input": "<input>", "labels": "<labels>"}  # paths may name patients; not recorded
    return run_job(config.input, config.labels, str(out), key, config.preprocess, config.ingest, args, record)
