"""Beam as medseq starts it, for every stage: one pipeline factory (`pipeline`) that
applies the default runner, imports Beam lean and reads options through Beam's own
`PipelineOptions`; and the DoFns that read or write a job's paths on any filesystem.

Ingest, its DICOMweb fetch, validate and evaluate build their pipelines here and
nowhere else (TFX's `_make_beam_pipeline()`), so an option given once reaches each of
them and none runs on Beam's switching DirectRunner.

`import apache_beam` imports every IO module whose client library is installed. With
TFMA's dependencies that includes BigQuery's client, which imports tqdm's notebook
widgets and through them IPython, and pandas: about 1 s of the 1.7-2.4 s the import
takes on 2 cores (`python -X importtime -c "import apache_beam"`); Pub/Sub's client
0.1 s more. Beam treats each as optional (an ImportError there leaves that IO out), so
in a process that only converts they are made unimportable while Beam loads and
importable again right after. Beam's worker processes, and every other command, import
Beam as it is.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

OPTIONAL = ("google.cloud.bigquery", "google.cloud.pubsub", "IPython", "ipywidgets", "pandas")


def import_beam_without_optional_io() -> None:
    if "apache_beam" in sys.modules:
        return
    blocked = [name for name in OPTIONAL if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not importable"
    try:
        importlib.import_module("apache_beam")
    except ImportError:  # a Beam that needs one of them after all: import it as it is
        for name in [m for m in sys.modules if m == "apache_beam" or m.startswith("apache_beam.")]:
            del sys.modules[name]
        _unblock(blocked)
        importlib.import_module("apache_beam")
    finally:
        _unblock(blocked)


def _unblock(names: list[str]) -> None:
    for name in names:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


# Beam's DirectRunner is a switching runner: it first checks whether the Prism runner
# (a Go binary fetched on first use) could run the pipeline, and ends on the FnApiRunner.
# medseq names the FnApiRunner itself.
FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def options(beam_args: Sequence[str]) -> Any:
    """`beam_args` parsed by Beam itself: read a value as Beam does, through a view
    (`options(args).view_as(S3Options).s3_endpoint_url`); both `--name=value` and
    `--name value` are understood, the last one wins."""
    import_beam_without_optional_io()
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(list(beam_args))


def default_beam_args(beam_args: Sequence[str], small_input: bool = False) -> list[str]:
    """Any runner's options pass through. Without a runner: the FnApiRunner, in-process
    for a small local input, else with one worker process per core."""
    from apache_beam.options.pipeline_options import StandardOptions

    args = list(beam_args)
    if options(args).view_as(StandardOptions).runner:
        return args
    if small_input:
        return [*args, f"--runner={FN_API_RUNNER}", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    return [*args, f"--runner={FN_API_RUNNER}", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={os.cpu_count() or 1}"]


@contextlib.contextmanager
def pipeline(beam_args: Sequence[str], small_input: bool = False) -> Iterator[Any]:
    """A Beam pipeline with medseq's defaults (`default_beam_args`), run when the block
    ends: every Beam pipeline medseq runs is made here."""
    import_beam_without_optional_io()
    import apache_beam as beam

    with beam.Pipeline(options=options(default_beam_args(beam_args, small_input))) as built:
        yield built
