"""Ingest on an S3-compatible object store (a real SeaweedFS, tests/object_store.py): the
default runner, and Beam's portable job service with an EXTERNAL SDK worker pool whose
workers cannot see the driver's files (a private mount namespace that hides them),
the way Flink and Spark run Python workers. Both write what a local convert writes,
byte for byte; what the store refuses is one line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from object_store import ObjectStore
from orthanc_server import free_port

from helpers import KEY, SAMPLES, convert

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
BUCKET = "medseq-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    server = ObjectStore(tmp_path_factory.mktemp("seaweedfs"))
    try:  # stopped by its PID however the set-up or the tests end
        server.client.create_bucket(Bucket=BUCKET)
        server.upload(SAMPLES / "cine_ef", BUCKET, "cine")
        yield server
    finally:
        server.stop()


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".medseq")}


@pytest.fixture(scope="module")
def local(tmp_path_factory, config):
    """A local convert and validate of the samples: what every remote run must write."""
    out = tmp_path_factory.mktemp("local")
    convert(config, out / "records", beam_args=())
    validate_stage(config, str(out / "records"), out / "validate", [])
    return files(out / "records"), files(out / "validate")


def validate_stage(config, examples: str, out, beam_args: list[str]):
    from medseq.components import validate

    return validate.run(config, validate.ValidateInputs(examples), out, beam_args)


def s3_config(config):
    return config.on_input(f"s3://{BUCKET}/cine/dicom", f"s3://{BUCKET}/cine/labels.csv")


def test_convert_from_and_to_s3_writes_what_a_local_convert_writes(store, config, local):
    records, stats = local
    got = convert(s3_config(config), f"s3://{BUCKET}/out/default", beam_args=store.beam_args())
    assert sum(got.records.values()) > 30
    assert store.objects(BUCKET, "out/default") == records
    checked = validate_stage(config, f"s3://{BUCKET}/out/default", f"s3://{BUCKET}/validated/default",
                             store.beam_args())
    assert not checked.anomalies and store.objects(BUCKET, "validated/default") == stats


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process serving port {port} exited ({process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port} within {seconds} s")


def test_a_worker_pool_that_shares_no_disk_with_the_driver(store, config, local, tmp_path, tmp_path_factory):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -m (root, util-linux) for the workers' private /tmp")
    job_port, pool_port = free_port(), free_port()
    workers_home = Path("/var/tmp") / f"medseq-workers-{os.getpid()}"
    workers_home.mkdir(parents=True, exist_ok=True)
    # The driver's folders (every test's files, the local records among them) are an empty
    # tmpfs for the workers, who run elsewhere with a temp folder of their own.
    hidden = tmp_path_factory.getbasetemp()
    pool = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs {hidden} && cd {workers_home} && exec {sys.executable} -m "
         f"apache_beam.runners.worker.worker_pool_main --service_port={pool_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "TMPDIR": str(workers_home), "HOME": str(workers_home)})
    jobs = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                             f"--port={job_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for_port(pool_port, pool)
        wait_for_port(job_port, jobs)
        args = [*store.beam_args(), "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"]
        records, stats = local
        convert(s3_config(config), f"s3://{BUCKET}/out/portable", beam_args=args)
        assert store.objects(BUCKET, "out/portable") == records
        validate_stage(config, f"s3://{BUCKET}/out/portable", f"s3://{BUCKET}/validated/portable", args)
        assert store.objects(BUCKET, "validated/portable") == stats
        assert not any(p.name.startswith(".medseq") for p in tmp_path.iterdir())
    finally:
        for process in (pool, jobs):
            os.killpg(process.pid, 9)
            process.wait()
        shutil.rmtree(workers_home, ignore_errors=True)


@pytest.mark.parametrize("case", ["no such bucket", "wrong secret", "no endpoint"])
def test_what_the_store_refuses_is_one_line(store, case, tmp_path):
    bucket = "no-such-bucket" if case == "no such bucket" else BUCKET
    args = store.beam_args(secret="wrong" if case == "wrong secret" else store.beam_args()[2].split("=", 1)[1])
    if case == "no endpoint":
        args[0] = f"--s3_endpoint_url=http://127.0.0.1:{free_port()}"
    env = {**os.environ, "MEDSEQ_HASH_KEY": KEY.decode(), "AWS_MAX_ATTEMPTS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "medseq.pipeline.cli", "convert", "--input", f"s3://{bucket}/cine/dicom",
         "--labels", f"s3://{bucket}/cine/labels.csv", "--out", f"s3://{bucket}/out/refused", *args],
        capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in result.stderr.splitlines() if line.startswith("medseq")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    expected = {"no such bucket": ("bucket does not exist", "labels file not found"),
                "wrong secret": ("refused the credentials",), "no endpoint": ("cannot reach the object store",)}[case]
    assert any(e in lines[0] for e in expected), lines[0]
    assert "wrong" not in lines[0]


def test_train_reads_records_on_s3_through_a_local_copy(store, config, local, tmp_path):
    import dataclasses

    from medseq.components import train

    records, _ = local
    for name, data in records.items():
        store.client.put_object(Bucket=BUCKET, Key=f"records/uploaded/{name}", Body=data)
    tiny = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1, conv_filters=(4,),
                                                                 lstm_units=4))
    inputs = train.TrainInputs(f"s3://{BUCKET}/records/uploaded")
    done = train.run(tiny, inputs, tmp_path / "train", store.beam_args())
    assert (Path(done.model_dir) / "saved_model.pb").exists()
    copy = tmp_path / "train" / train.RECORDS_COPY
    assert files(copy) == records  # the records trained on are the store's, byte for byte
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    train.run(tiny, inputs, tmp_path / "train", store.beam_args())  # resumed: nothing copied again
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == stamps
