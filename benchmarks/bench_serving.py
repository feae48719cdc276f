"""Serving latency, side by side in one run: the exported SavedModel's two signatures
against the Keras model they wrap, called directly.

    python benchmarks/bench_serving.py [--rounds 5] [--calls 60]

The model is the one `medseq train` builds from the shipped config (16x64x64x1 frames;
latency does not depend on the weights' values), exported by medseq's own export and
loaded back with `tf.saved_model.load`, as TF Serving loads it. Per batch size (1, 8):

- `keras eager`:   model(inputs, training=False), the call a notebook makes;
- `keras graph`:   the same call inside one tf.function (what Keras' predict runs);
- `predict_frames`: the signature on the same frames;
- `serving_default`: the signature on serialized tf.Examples of the same frames (it also
  parses and decodes them);
- `parsing alone`: that parsing and decoding by itself, in one tf.function.

- `litert <precision>`, `onnx fp32`: the edge artifacts `medseq export` writes of the
  same model (unrolled LSTM, frozen, built-in ops only), run on the frames under the
  runtime a device would use (LiteRT's interpreter, its signature runner; onnxruntime's
  CPU provider), each with its file size beside the SavedModel's folder.

Rounds interleave the callers so that machine noise hits all alike. Prints p50/p99 in ms,
the ratios against `keras graph`, and writes JSON (benchmarks/results/bench_serving.json).
Goal: signature / Keras at most 1.1. `--no-edge` leaves the artifacts out (they need
`pip install 'medseq[edge]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from medseq.components.io.examples import RecordSpec, parse_examples, synthetic_frames
from medseq.components.model.network import build_model
from medseq.components.model.saved_model import export_saved_model
from medseq.components.push.warmup import synthetic_example
from medseq.pipeline import features as F
from medseq.pipeline.config import EXPORT_FORMATS, load_config

RESULTS = Path(__file__).resolve().parent / "results" / "bench_serving.json"
SPEC = RecordSpec(16, 64, 64, 1, "uint8", ("normal", "reduced_ef"))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def artifacts(model: keras.Model) -> dict[str, bytes]:
    """Each offered (format, precision) of `model`, converted as `medseq export` does."""
    from medseq.components.export import convert

    function = convert.frozen_function(model, SPEC)
    return {f"{fmt} {precision}": (convert.to_litert if fmt == "litert" else convert.to_onnx)(function,
                                                                                              precision).data
            for fmt, precisions in EXPORT_FORMATS.items() for precision in precisions}


def callers(model: keras.Model, model_dir: Path, edge: dict[str, bytes],
            batch: int) -> dict[str, Callable[[], object]]:
    from medseq.components.model import runtimes

    loaded = tf.saved_model.load(str(model_dir))
    frames = tf.constant(synthetic_frames(SPEC, batch))
    valid = tf.constant(np.full(batch, SPEC.frames, np.int32))
    examples = tf.constant([synthetic_example(f) for f in frames.numpy()])
    inputs = {F.FRAMES: frames, F.VALID_FRAMES: valid}
    graph = tf.function(lambda x: model(x, training=False))
    parse = tf.function(lambda e: parse_examples(e, SPEC)[F.FRAMES])
    by_frames, by_examples = loaded.signatures[F.FRAMES_SIGNATURE], loaded.signatures[F.SERVING_SIGNATURE]
    fns: dict[str, Callable[[], object]] = {
        "keras eager": lambda: model(inputs, training=False).numpy(),
        "keras graph": lambda: graph(inputs).numpy(),
        "predict_frames": lambda: by_frames(**inputs)[F.PROBABILITIES].numpy(),
        "serving_default": lambda: by_examples(examples=examples)[F.PROBABILITIES].numpy(),
        "parsing alone": lambda: parse(examples).numpy(),  # what serving_default adds: parse + decode_raw
    }
    frames_np, valid_np = frames.numpy(), valid.numpy()
    for name, data in edge.items():
        run = runtimes.of_bytes(name.split()[0], data)
        fns[name] = lambda run=run: run(frames_np, valid_np)
    return fns


def measure(fns: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, dict[str, float]]:
    for fn in fns.values():  # trace and warm up
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)), "calls": len(t)}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=60, help="calls per caller and round")
    parser.add_argument("--no-edge", action="store_true", help="leave out the LiteRT and ONNX artifacts")
    args = parser.parse_args()
    results: dict[str, object] = {"machine": cpu_name(), "cores": os.cpu_count(), "batches": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(SPEC, load_config().train)
        model_dir = export_saved_model(model, SPEC, Path(tmp) / "model")
        edge = {} if args.no_edge else artifacts(model)
        sizes = {"saved_model": folder_bytes(Path(model_dir)), **{name: len(data) for name, data in edge.items()}}
        results["bytes"] = sizes
        print("size: " + ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in sizes.items()))
        print(f"{'batch':>5}  {'caller':<20} {'p50 ms':>8} {'p99 ms':>8} {'p50 / keras graph':>18}")
        for batch in (1, 8):
            rows = measure(callers(model, Path(model_dir), edge, batch), args.rounds, args.calls)
            base = rows["keras graph"]["p50_ms"]
            for name, row in rows.items():
                row["ratio_p50"] = row["p50_ms"] / base
                print(f"{batch:>5}  {name:<20} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['ratio_p50']:>18.2f}")
            results["batches"][str(batch)] = rows  # type: ignore[index]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
