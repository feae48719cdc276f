"""A Beam SDK worker in its own process, booted the way Beam's Python container boots one.

Flink and Spark run Python code in SDK workers that an EXTERNAL worker pool starts:
Beam's container runs `worker_pool_main --container_executable=/opt/apache/beam/boot`,
and `boot` asks the runner's provision service for the job's pipeline options and
starts `sdk_worker_main`, which configures Beam's filesystems with them (S3 endpoint
and keys included). This module is that `boot` for a host without the container:

    python -m apache_beam.runners.worker.worker_pool_main --service_port=50000 \\
        --container_executable="$(python -m medseq.pipeline.beam_worker --path)"

Each worker is then one process that can be killed on its own, with the job's options,
and no file of the driver's. Staged artifacts are not installed: the worker's Python
environment must hold medseq, as a custom container image would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

SCRIPT = "medseq-beam-boot"  # written once beside the temp folder: worker_pool_main runs an executable


def executable() -> Path:
    """A small shell script that runs this module with this interpreter (worker_pool_main
    takes the path of one executable, not a command line)."""
    path = Path(tempfile.gettempdir()) / f"{SCRIPT}-{os.getuid()}"
    text = f'#!/bin/sh\nexec "{sys.executable}" -m medseq.pipeline.beam_worker "$@"\n'
    if not path.exists() or path.read_text() != text:
        partial = path.with_name(path.name + f".{os.getpid()}")
        partial.write_text(text)
        partial.chmod(0o755)
        partial.replace(path)
    return path


def _descriptor(url: str) -> str:
    from apache_beam.portability.api import endpoints_pb2
    from google.protobuf import text_format

    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))


def boot(worker_id: str, provision: str, control: str, logging_url: str) -> None:
    """Asks the provision service for the job's options, then becomes `sdk_worker_main`."""
    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
    from google.protobuf import json_format

    with grpc.insecure_channel(provision) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", worker_id)], timeout=60).info
    semi_persistent = Path(tempfile.gettempdir()) / f"beam-worker-{worker_id}"
    semi_persistent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WORKER_ID": worker_id, "SEMI_PERSISTENT_DIRECTORY": str(semi_persistent),
           "PIPELINE_OPTIONS": json.dumps(json_format.MessageToDict(info.pipeline_options)),
           "CONTROL_API_SERVICE_DESCRIPTOR": _descriptor(info.control_endpoint.url or control),
           "LOGGING_API_SERVICE_DESCRIPTOR": _descriptor(info.logging_endpoint.url or logging_url)}
    if info.runner_capabilities:
        env["RUNNER_CAPABILITIES"] = " ".join(info.runner_capabilities)
    os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medseq.pipeline.beam_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--path", action="store_true", help="print the executable to pass as --container_executable")
    for name in ("id", "provision_endpoint", "control_endpoint", "logging_endpoint", "artifact_endpoint"):
        parser.add_argument(f"--{name}", default="")
    args = parser.parse_args(argv)
    if args.path:
        print(executable())
        return
    if not (args.id and args.provision_endpoint):
        parser.error("expected --id and --provision_endpoint (worker_pool_main passes them)")
    boot(args.id, args.provision_endpoint, args.control_endpoint, args.logging_endpoint)


if __name__ == "__main__":
    main()
