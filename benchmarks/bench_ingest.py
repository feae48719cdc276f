"""Ingest throughput against the single-process decode floor, side by side in one run.

    python benchmarks/bench_ingest.py [--patients 40] [--workers 2]

1. floor: one process reads every file and decodes its pixels with pydicom, nothing else;
2. ingest: the real `medseq convert` job (DirectRunner, multi_processing, N workers).

Prints files/s for both and their ratio (DESIGN.md: a naive job reached 0.56x, the
goal is 1.6x with 2 workers).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pydicom

from medseq.components import ingest, synth
from medseq.pipeline.config import load_config


def decode_floor(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        try:
            _ = pydicom.dcmread(path).pixel_array
        except Exception:  # noqa: BLE001 - junk files cost what they cost
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--task", default="cine_ef", choices=synth.TASKS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        synth.run(args.task, args.patients, seed=1, out=root)
        files = [p for p in (root / "dicom").rglob("*") if p.is_file()]
        config = load_config().on_input(str(root / "dicom"), str(root / "labels.csv"))
        floor = decode_floor(files)
        start = time.perf_counter()
        ingest.run(config, Path(tmp) / "out", key=b"benchmark-key-0123456789", beam_args=[
            "--runner=DirectRunner", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={args.workers}"])
        job = time.perf_counter() - start
    n = len(files)
    print(f"files: {n} ({args.task}, {args.patients} patients, full-size matrices)")
    print(f"decode floor, 1 process : {floor:7.2f} s  {n / floor:8.1f} files/s")
    print(f"medseq convert, {args.workers} workers: {job:7.2f} s  {n / job:8.1f} files/s  "
          f"ratio {floor / job:.2f}x of the floor (goal 1.6x)")


if __name__ == "__main__":
    main()
