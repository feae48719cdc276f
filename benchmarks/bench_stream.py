"""Streaming latency, side by side in one run: a causal model's step (one frame, the state
carried) against rerunning the whole-sequence model on the last T frames at every frame.

    python benchmarks/bench_stream.py [--rounds 5] [--frames 60]

The model is the causal per-frame model `medseq train` builds from the shipped config
(train.target: frames, train.causal: true) at the shipped frame size (64x64x1; latency
does not depend on the weights' values), built and converted by medseq's own export
code. Per runtime (the SavedModel's signature under TensorFlow, what TF Serving runs;
LiteRT's interpreter; onnxruntime's CPU provider), one stream (batch 1):

- `step`: predict_step on one frame and the state;
- `window T=16`, `window T=32`: the naive stream, the whole-sequence model (predict_frames)
  on the last T frames, at every new frame.

Rounds interleave the callers so that machine noise hits all alike. Prints p50/p99 in ms
per frame, each against the 30 fps frame interval (33.3 ms), and the window/step ratios;
writes JSON (benchmarks/results/bench_stream.json). Goals: step p99 under a tenth of the
30 fps interval (3.33 ms) for LiteRT and ONNX; the step at least T/2 times cheaper than
the window rerun. Needs `pip install 'medseq[edge]'`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from medseq.components.io.examples import RecordSpec, synthetic_frames
from medseq.components.model import runtimes
from medseq.components.model.network import build_model
from medseq.components.model.saved_model import export_saved_model
from medseq.components.model.step import FRAME, state_tensors, zero_state
from medseq.pipeline import features as F
from medseq.pipeline.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import cpu_name, measure  # the same rounds and percentiles

RESULTS = Path(__file__).resolve().parent / "results" / "bench_stream.json"
FPS_30_MS = 1000 / 30
WINDOWS = (16, 32)


def spec_of(frames: int, height: int, width: int) -> RecordSpec:
    return RecordSpec(frames, height, width, 1, "uint8", ("ed", "es"), target="frames")


def models(spec: RecordSpec) -> tuple[keras.Model, RecordSpec]:
    config = dataclasses.replace(load_config(None).train, target="frames", causal=True)
    keras.utils.set_random_seed(0)
    return build_model(spec, config), spec


def callers(folder: Path, height: int, width: int) -> dict[str, Callable[[], object]]:
    """Every (runtime, step or window) caller on seeded synthetic frames of one stream."""
    from medseq.components.export import convert

    fns: dict[str, Callable[[], object]] = {}
    step_spec = spec_of(WINDOWS[-1], height, width)
    model, _ = models(step_spec)
    states = state_tensors(model, step_spec)
    export_saved_model(model, step_spec, folder / "step")
    frozen, outputs = convert.frozen_step_function(model, step_spec)
    steps = {"savedmodel": runtimes.load_step(folder / "step"),
             "litert": runtimes.step_of_bytes("litert", convert.to_litert(convert.named_outputs(frozen, outputs),
                                                                         "fp32").data, threads=2),
             "onnx": runtimes.step_of_bytes("onnx", convert.to_onnx(frozen, "fp32", outputs).data, threads=2)}
    frame = synthetic_frames(step_spec, 1)[0, :1]
    for name, run in steps.items():
        holder = {"state": zero_state(states, 1)}

        def step(run: runtimes.Step = run, holder: dict = holder) -> object:
            out = run({FRAME: frame, **holder["state"]})
            holder["state"] = {s.key: out[s.key] for s in states}
            return out

        fns[f"{name} step"] = step
    for t in WINDOWS:
        spec = spec_of(t, height, width)
        model, _ = models(spec)
        export_saved_model(model, spec, folder / f"window{t}")
        function = convert.frozen_function(model, spec)
        frames, valid = synthetic_frames(spec, 1), np.array([t], np.int32)
        whole = {"savedmodel": runtimes.saved_model(folder / f"window{t}"),
                 "litert": runtimes.litert(convert.to_litert(function, "fp32").data, threads=2),
                 "onnx": runtimes.onnx(convert.to_onnx(function, "fp32", (F.FRAME_VALUES,)).data, threads=2)}
        for name, run in whole.items():
            fns[f"{name} window T={t}"] = lambda run=run, frames=frames, valid=valid: run(frames, valid)
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=60, help="frames per caller and round")
    args = parser.parse_args()
    shipped = load_config(None).preprocess
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(callers(Path(tmp), shipped.height, shipped.width), args.rounds, args.frames)
    print(f"CPU: {cpu_name()}; one stream (batch 1), {shipped.height}x{shipped.width}x1 frames; ms per frame")
    print(f"{'caller':28s} {'p50':>8s} {'p99':>8s}  {'p99 / 30 fps interval':>22s}")
    for name, r in results.items():
        print(f"{name:28s} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f}  {r['p99_ms'] / FPS_30_MS:22.3f}")
    ratios = {}
    for runtime in ("savedmodel", "litert", "onnx"):
        step = results[f"{runtime} step"]["p50_ms"]
        for t in WINDOWS:
            ratio = results[f"{runtime} window T={t}"]["p50_ms"] / step
            ratios[f"{runtime} T={t}"] = ratio
            goal = "met" if ratio >= t / 2 else "NOT met"
            print(f"{runtime:10s} window T={t} / step (p50): {ratio:6.1f}x  (goal >= {t // 2}x: {goal})")
    for runtime in ("litert", "onnx"):
        p99 = results[f"{runtime} step"]["p99_ms"]
        print(f"{runtime:10s} step p99 {p99:.3f} ms: {'met' if p99 < FPS_30_MS / 10 else 'NOT met'} "
              f"(goal < {FPS_30_MS / 10:.2f} ms)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu": cpu_name(), "frame": [shipped.height, shipped.width, 1],
                                   "results": results, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
