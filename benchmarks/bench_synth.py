"""Synth throughput on one core: images written per second, full-size matrices.

    python benchmarks/bench_synth.py [--patients 20]

Prints images/s for each task and the ratio to the 200 images/s target.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from medseq.components import synth

TARGET = 200.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=20)
    args = parser.parse_args()
    for task in synth.TASKS:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            stats = synth.run(task, args.patients, seed=1, out=tmp)
            seconds = time.perf_counter() - start
        rate = stats.slices / seconds
        print(f"{task:<10} {stats.slices:>6} images {seconds:6.2f} s  {rate:7.1f} images/s  "
              f"ratio to target {rate / TARGET:.2f}x")


if __name__ == "__main__":
    main()
