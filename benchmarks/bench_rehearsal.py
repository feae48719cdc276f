"""The cluster rehearsal against the local default, side by side in one run: where the
time of an object store and of a portable runner goes.

    python benchmarks/bench_rehearsal.py [--patients 40] [--sizes 1 3] [--workers 2]

Data: `medseq synth --task cine_ef` in chunks of `--patients` patients (about 24 files a
patient), uploaded to a SeaweedFS on loopback (tests/object_store.py; `pip install
'medseq[test]'`). Four ways to run the same `medseq convert`, each in a fresh process at
every size, so that each step adds one thing:

1. `local`: a local folder into a local folder, no Beam option: what a user gets (the
   job graph in medseq's own process below 3,000 files);
2. `local beam`: the same on Beam's FnApiRunner with `--workers` worker processes:
   what Beam itself costs;
3. `s3 beam`: input, labels and records on the object store (Beam's S3 filesystem),
   same runner: what the object store costs;
4. `rehearsal`: the same on Beam's portable job service with an EXTERNAL worker pool
   of process workers (medseq.pipeline.beam_worker), `--workers` at once: what a
   portable runner and its workers cost (the topology of Flink and Spark).

Prints, for each, the time at every size and the CPU seconds SeaweedFS spent serving it
(it shares the machine's cores), the fixed cost (the time line's intercept at zero
files) and the marginal throughput (files/s of its slope), and their ratios to `local`;
and the read floor: every input file's bytes read through medseq's storage in one
process, from the disk and from the store (one boto3 client). Writes
benchmarks/results/bench_rehearsal.json.

Beam 2.77's local job service runs one SDK worker per job whatever the options say
(`--sdk_worker_parallelism`, `--direct_num_workers`: one `sdk_worker_main` at a time,
seen in `ps`), so the rehearsal's marginal is one worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

from bench_fetch import cpu_name  # noqa: E402
from bench_ingest import KEY, inputs, make_chunks, slope  # noqa: E402
from object_store import ObjectStore  # noqa: E402
from orthanc_server import free_port, wait_for_port  # noqa: E402

from medseq.pipeline import beam_worker  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "bench_rehearsal.json"
BUCKET = "bench"
WAYS = ("local", "local beam", "s3 beam", "rehearsal")


def run_convert(source: str, labels: str, out: str, beam_args: list[str]) -> float:
    command = [sys.executable, "-m", "medseq.pipeline.cli", "convert", "--input", source, "--labels", labels,
               "--out", out, *beam_args]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "MEDSEQ_HASH_KEY": KEY})
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (SeaweedFS's own work)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def read_floor(paths: list[str], beam_args: list[str]) -> float:
    """Seconds to read every file's bytes through medseq's storage in one process (one
    boto3 client on s3://): what a worker pays per file before any decoding."""
    from medseq.components.io import storage

    with storage.filesystem_options(beam_args, *paths):
        start = time.perf_counter()
        for path in paths:
            with storage.open_binary(path) as f:
                f.read()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rehearsal-"))
    store = ObjectStore(work / "seaweedfs")
    job_port, pool_port = free_port(), free_port()
    servers = [subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                 f"--service_port={pool_port}", f"--container_executable={beam_worker.executable()}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
               subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                 f"--port={job_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)]
    try:
        wait_for_port(pool_port, servers[0])
        wait_for_port(job_port, servers[1])
        store.client.create_bucket(Bucket=BUCKET)
        make_chunks(work / "data", args.patients, max(args.sizes))
        beam = [f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
        portable = [*store.beam_args(), "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                    "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}",
                    f"--sdk_worker_parallelism={args.workers}"]
        seconds: dict[str, dict[int, float]] = {way: {} for way in WAYS}
        cpu: dict[str, dict[int, float]] = {way: {} for way in WAYS}
        floors: dict[int, dict[str, float]] = {}
        files: dict[int, int] = {}
        for size in args.sizes:
            pattern, labels, listed = inputs(work / "data", size, work)
            files[size] = len(listed)
            prefix = f"in-{size}"
            for i in range(size):
                store.upload(work / "data" / f"c{i:02d}" / "dicom", BUCKET, f"{prefix}/dicom/c{i:02d}")
            store.client.upload_file(str(labels), BUCKET, f"{prefix}/labels.csv")
            s3_in, s3_labels = f"s3://{BUCKET}/{prefix}/dicom/**", f"s3://{BUCKET}/{prefix}/labels.csv"
            runs = {"local": (pattern, str(labels), str(work / f"out-local-{size}"), []),
                    "local beam": (pattern, str(labels), str(work / f"out-beam-{size}"), beam),
                    "s3 beam": (s3_in, s3_labels, f"s3://{BUCKET}/out-beam-{size}", [*store.beam_args(), *beam]),
                    "rehearsal": (s3_in, s3_labels, f"s3://{BUCKET}/out-portable-{size}", portable)}
            for way, (source, label_path, out, beam_args) in runs.items():
                store_cpu = cpu_seconds(store.process.pid)
                seconds[way][size] = run_convert(source, label_path, out, beam_args)
                store_cpu = cpu_seconds(store.process.pid) - store_cpu
                cpu[way][size] = round(store_cpu, 1)
                print(f"{way:<11} {size}x ({files[size]} files): {seconds[way][size]:.1f} s "
                      f"(SeaweedFS CPU {store_cpu:.1f} s)", flush=True)
            local_paths = [str(p) for p in listed]
            relative = [p.relative_to(work / "data").parts for p in listed]  # (cXX, "dicom", ...)
            remote_paths = [f"s3://{BUCKET}/{prefix}/dicom/{parts[0]}/{'/'.join(parts[2:])}" for parts in relative]
            floors[size] = {"local": round(len(listed) / read_floor(local_paths, []), 1),
                            "s3": round(len(listed) / read_floor(remote_paths, store.beam_args()), 1)}
            print(f"read floor  {size}x: local {floors[size]['local']:.0f} files/s, "
                  f"s3 {floors[size]['s3']:.0f} files/s", flush=True)
        table = {}
        for way in WAYS:
            by_files = {files[s]: t for s, t in seconds[way].items()}
            per_file = slope(by_files)
            fixed = sum(by_files.values()) / len(by_files) - per_file * sum(by_files) / len(by_files)
            table[way] = {"seconds": seconds[way], "seaweedfs_cpu_s": cpu[way], "fixed_s": round(fixed, 2),
                          "marginal_files_per_s": round(1 / per_file, 1) if per_file > 0 else None}
        base = table["local"]
        print(f"\n{'way':<11} {'fixed s':>8} {'x local':>8} {'files/s':>8} {'x local':>8}")
        for way, row in table.items():
            rate = row["marginal_files_per_s"]
            row["fixed_x_local"] = round(row["fixed_s"] / base["fixed_s"], 2) if base["fixed_s"] > 0 else None
            row["marginal_x_local"] = (round(rate / base["marginal_files_per_s"], 2)
                                       if rate and base["marginal_files_per_s"] else None)
            print(f"{way:<11} {row['fixed_s']:>8.1f} {row['fixed_x_local'] or float('nan'):>8.2f} "
                  f"{rate or float('nan'):>8.1f} {row['marginal_x_local'] or float('nan'):>8.2f}")
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "patients": args.patients,
                                       "workers": args.workers, "files": files, "ways": table,
                                       "read_floor_files_per_s": floors}, indent=2) + "\n")
    finally:
        for server in servers:
            os.killpg(server.pid, 9)
            server.wait()
        store.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
