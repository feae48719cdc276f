"""Ingest on an S3-compatible object store (a real SeaweedFS, tests/object_store.py): the
default runner, and Beam's portable job service with an EXTERNAL SDK worker pool whose
workers cannot see the driver's files (a private mount namespace that hides them),
the way Flink and Spark run Python workers. Both write what a local convert writes,
byte for byte, a DICOMweb input too (a real Orthanc, its series fetched by the pool's
workers into a cache on the store); what the store refuses is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from object_store import GcsEmulator, ObjectStore
from orthanc_server import PASSWORD, USER, Orthanc, free_port, wait_for_port

from helpers import KEY, SAMPLES, convert
from medseq.pipeline import beam_worker
from medseq.pipeline import features as F

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


def tiny_config(config):
    """A model trained for one epoch: the comparisons need a model, not a good one."""
    import dataclasses

    return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1, conv_filters=(4,),
                                                                 lstm_units=4))


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


@pytest.fixture(scope="module")
def cluster(store, tmp_path_factory):
    """Beam's portable job service and an EXTERNAL worker pool whose workers are
    processes of their own (booted as Beam's container boots them, with the job's
    options: medseq.pipeline.beam_worker) in a private mount namespace where the
    driver's folders are an empty tmpfs, with another working directory and temp folder.
    Yields the Beam options of a job on it, and the pool's process."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -m (root, util-linux) for the workers' private /tmp")
    job_port, pool_port = free_port(), free_port()
    workers_home = Path("/var/tmp") / f"medseq-workers-{os.getpid()}"
    workers_home.mkdir(parents=True, exist_ok=True)
    hidden = tmp_path_factory.getbasetemp()  # every test's files, the local records among them
    pool = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs {hidden} && cd {workers_home} && exec {sys.executable} -m "
         f"apache_beam.runners.worker.worker_pool_main --service_port={pool_port} "
         f"--container_executable={beam_worker.executable()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # The archive's credentials, as a deployment gives its workers (they fetch DICOMweb series).
        env={**os.environ, "TMPDIR": str(workers_home), "HOME": str(workers_home), "MEDSEQ_DICOMWEB_USER": USER,
             "MEDSEQ_DICOMWEB_PASSWORD": PASSWORD})
    jobs = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                             f"--port={job_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for_port(pool_port, pool)
        wait_for_port(job_port, jobs)
        yield [*store.beam_args(), "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
               "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"], pool
    finally:
        for process in (pool, jobs):
            os.killpg(process.pid, 9)
            process.wait()
        shutil.rmtree(workers_home, ignore_errors=True)


def test_a_worker_pool_that_shares_no_disk_with_the_driver(store, config, local, cluster, tmp_path):
    args, _ = cluster
    records, stats = local
    convert(s3_config(config), f"s3://{BUCKET}/out/portable", beam_args=args)
    assert store.objects(BUCKET, "out/portable") == records
    validate_stage(config, f"s3://{BUCKET}/out/portable", f"s3://{BUCKET}/validated/portable", args)
    assert store.objects(BUCKET, "validated/portable") == stats
    assert not any(p.name.startswith(".medseq") for p in tmp_path.iterdir())


def test_a_dicomweb_input_is_fetched_by_the_worker_pool_into_a_cache_on_the_store(store, config, cluster, tmp_path,
                                                                                  monkeypatch):
    """The fetch is the ingest graph's first step: on a pool that shares no disk with the
    driver, the workers fetch the archive's series into a cache on the object store and
    convert them there; the output is what an in-process fetch and convert writes."""
    import dataclasses

    args, _ = cluster
    monkeypatch.setenv("MEDSEQ_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDSEQ_DICOMWEB_PASSWORD", PASSWORD)
    archive = Orthanc(tmp_path / "orthanc")
    try:
        assert len(archive.upload(sorted(p for p in (SAMPLES / "cine_ef" / "dicom").rglob("*") if p.is_file()))) > 40

        def web(cache: str):
            settings = dataclasses.replace(config.ingest.dicomweb, cache_dir=cache)
            return dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, dicomweb=settings)).on_input(
                archive.url, str(SAMPLES / "cine_ef" / "labels.csv"))

        here = convert(web(str(tmp_path / "cache")), tmp_path / "here", beam_args=())
        there = convert(web(f"s3://{BUCKET}/dicomweb-cache"), f"s3://{BUCKET}/out/dicomweb", beam_args=args)
    finally:
        archive.stop()
    assert store.objects(BUCKET, "out/dicomweb") == files(tmp_path / "here")  # records, qc, manifest, dead letters
    assert there.fetch["fetched"] == there.fetch["listed"] == here.fetch["listed"] > 30
    cached = store.objects(BUCKET, "dicomweb-cache")
    series = {name.split("/")[2] for name in cached if name.split("/")[1] == "series"}
    digests = {name.split("/")[2] for name in cached if name.split("/")[1] == "digests"}
    assert len(series) == there.fetch["listed"] and digests == series  # every series whole, marked by its digest
    assert sum(name.split("/")[1] == "series" for name in cached) == there.fetch["instances"]
    assert not any(".medseq-staging" in name for name in cached)


def test_evaluate_through_the_worker_pool_writes_what_a_local_evaluate_writes(store, config, local, cluster,
                                                                              tmp_path_factory):
    from medseq.components import evaluate, train

    args, _ = cluster
    records, _ = local
    for name, data in records.items():
        store.client.put_object(Bucket=BUCKET, Key=f"records/evaluated/{name}", Body=data)
    local_records = tmp_path_factory.mktemp("records")
    for name, data in records.items():
        (local_records / name).parent.mkdir(parents=True, exist_ok=True)
        (local_records / name).write_bytes(data)
    model = train.run(tiny_config(config), train.TrainInputs(str(local_records)),
                      tmp_path_factory.mktemp("train")).model_dir
    here = evaluate.run(config, evaluate.EvaluateInputs(str(local_records), model), tmp_path_factory.mktemp("here"))
    there = evaluate.run(config, evaluate.EvaluateInputs(f"s3://{BUCKET}/records/evaluated", model),
                         tmp_path_factory.mktemp("there"), [*args, f"--temp_location=s3://{BUCKET}/tmp"])
    written = files(Path(here.out))
    assert any(name.startswith("metrics/") for name in written) and (F.BLESSED in written or F.NOT_BLESSED in written)
    copied = {k: v for k, v in files(Path(there.out)).items() if not k.startswith(evaluate.RECORDS_COPY + "/")}
    assert copied == written  # metrics, verdict, predictions and report, byte for byte
    assert here.blessed == there.blessed and json.dumps(here.metrics) == json.dumps(there.metrics)  # NaN too
    assert not store.objects(BUCKET, "tmp")  # TFMA's workers wrote under --temp_location; nothing is left there


def test_a_killed_worker_fails_the_job_in_one_line_and_the_rerun_is_identical(store, config, local, cluster):
    args, pool = cluster
    records, _ = local
    out = "out/killed"
    env = {**os.environ, "MEDSEQ_HASH_KEY": KEY.decode()}
    job = subprocess.Popen(
        [sys.executable, "-m", "medseq.pipeline.cli", "convert", "--input", f"s3://{BUCKET}/cine/dicom",
         "--labels", f"s3://{BUCKET}/cine/labels.csv", "--out", f"s3://{BUCKET}/{out}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed = []
    deadline = time.monotonic() + 240
    while not killed and job.poll() is None and time.monotonic() < deadline:
        if store.keys(BUCKET, out):  # the job is writing its staging: kill every worker of the pool
            killed = [pid for pid in children(pool.pid) if not os.kill(pid, 9)]
        time.sleep(0.1)
    stdout, stderr = job.communicate(timeout=600)
    assert killed, "the job ended before a worker could be killed"
    lines = [line for line in stderr.splitlines() if line.startswith("medseq")]
    assert job.returncode == 1 and len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "failed on its runner" in lines[0] and "run it again" in lines[0]
    assert not store.keys(BUCKET, out)  # no partial result, no staging left behind
    convert(s3_config(config), f"s3://{BUCKET}/{out}", beam_args=args)  # the pool starts new workers
    assert store.objects(BUCKET, out) == records


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the pool's workers), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSEQ_HASH_KEY": KEY.decode(), "AWS_MAX_ATTEMPTS": "1"}
    return subprocess.run([sys.executable, "-m", "medseq.pipeline.cli", *argv], capture_output=True, text=True,
                          timeout=300, env=env)


def stage_argv(command: str, bucket: str) -> list[str]:
    root = f"s3://{bucket}"
    return {"convert": ["convert", "--input", f"{root}/cine/dicom", "--labels", f"{root}/cine/labels.csv",
                        "--out", f"{root}/out/refused"],
            "validate": ["validate", "--examples", f"{root}/out/default", "--out", f"{root}/validated/refused"],
            "evaluate": ["evaluate", "--examples", f"{root}/out/default", "--model", "model",
                         "--out", "evaluated"]}[command]


# Every mistake on convert; validate and evaluate share its check (remote_errors.on_filesystems),
# and each meets two of them (each case a fresh process: 8 s of imports).
REFUSED = [("convert", "no such bucket"), ("convert", "wrong secret"), ("convert", "no endpoint"),
           ("validate", "no such bucket"), ("validate", "no endpoint"),
           ("evaluate", "wrong secret"), ("evaluate", "no such bucket")]


@pytest.mark.parametrize(("command", "case"), REFUSED)
def test_what_the_store_refuses_is_one_line(store, command, case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bucket = "no-such-bucket" if case == "no such bucket" else BUCKET
    args = store.beam_args(secret="wrong" if case == "wrong secret" else store.beam_args()[2].split("=", 1)[1])
    if case == "no endpoint":
        args[0] = f"--s3_endpoint_url=http://127.0.0.1:{free_port()}"
    result = cli(*stage_argv(command, bucket), *args)
    lines = [line for line in result.stderr.splitlines() if line.startswith("medseq")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    expected = {"no such bucket": ("bucket does not exist", "not found", "no qc.json"),
                "wrong secret": ("refused the credentials",), "no endpoint": ("cannot reach the object store",)}[case]
    assert any(e in lines[0] for e in expected), lines[0]
    assert "wrong" not in lines[0]


def test_validate_and_evaluate_on_s3_from_the_command_line(store, config, local, tmp_path, monkeypatch):
    from medseq.components import train

    monkeypatch.chdir(tmp_path)
    records, stats = local
    for name, data in records.items():
        store.client.put_object(Bucket=BUCKET, Key=f"records/cli/{name}", Body=data)
    checked = cli("validate", "--examples", f"s3://{BUCKET}/records/cli", "--out", f"s3://{BUCKET}/validated/cli",
                  *store.beam_args())
    assert checked.returncode == 0 and "validate: 0 anomalies" in checked.stdout, checked.stderr[-2000:]
    assert store.objects(BUCKET, "validated/cli") == stats
    model = train.run(tiny_config(config), train.TrainInputs(f"s3://{BUCKET}/records/cli"), tmp_path / "train",
                      store.beam_args()).model_dir
    judged = cli("evaluate", "--examples", f"s3://{BUCKET}/records/cli", "--model", model, "--out", "evaluated",
                 *store.beam_args())
    assert judged.returncode in (0, 1) and "Traceback" not in judged.stderr, judged.stderr[-2000:]
    assert judged.stdout.startswith("evaluate: ") and "BLESSED -> " in judged.stdout
    assert (tmp_path / "evaluated" / F.BLESSED).exists() != (tmp_path / "evaluated" / F.NOT_BLESSED).exists()


def test_train_reads_records_on_s3_through_a_local_copy(store, config, local, tmp_path):
    from medseq.components import train

    records, _ = local
    for name, data in records.items():
        store.client.put_object(Bucket=BUCKET, Key=f"records/uploaded/{name}", Body=data)
    tiny = tiny_config(config)
    inputs = train.TrainInputs(f"s3://{BUCKET}/records/uploaded")
    done = train.run(tiny, inputs, tmp_path / "train", store.beam_args())
    assert (Path(done.model_dir) / "saved_model.pb").exists()
    copy = tmp_path / "train" / train.RECORDS_COPY
    assert files(copy) == records  # the records trained on are the store's, byte for byte
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    train.run(tiny, inputs, tmp_path / "train", store.beam_args())  # resumed: nothing copied again
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == stamps


def test_gs_paths_through_a_gcs_emulator(config, local, tmp_path):
    """gs:// (Beam's GCS filesystem, Google's storage client) against fake-gcs-server:
    convert and validate write what a local run writes; train and evaluate read the
    records through their local copy (TensorFlow's own gs:// knows no emulator)."""
    from medseq.components import evaluate, train

    server = GcsEmulator()
    before = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.endpoint  # inherited by Beam's worker processes
    try:
        server.create_bucket(BUCKET)
        server.upload(SAMPLES / "cine_ef", BUCKET, "cine")
        records, stats = local
        on_gs = config.on_input(f"gs://{BUCKET}/cine/dicom", f"gs://{BUCKET}/cine/labels.csv")
        convert(on_gs, f"gs://{BUCKET}/out", beam_args=["--direct_num_workers=2"])
        assert server.objects(BUCKET, "out") == records
        validate_stage(config, f"gs://{BUCKET}/out", f"gs://{BUCKET}/validated", [])
        assert server.objects(BUCKET, "validated") == stats
        model = train.run(tiny_config(config), train.TrainInputs(f"gs://{BUCKET}/out"), tmp_path / "train").model_dir
        assert files(tmp_path / "train" / train.RECORDS_COPY) == records
        judged = evaluate.run(config, evaluate.EvaluateInputs(f"gs://{BUCKET}/out", model), tmp_path / "evaluate")
        assert (tmp_path / "evaluate" / (F.BLESSED if judged.blessed else F.NOT_BLESSED)).exists()
    finally:
        server.stop()
        if before is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = before
