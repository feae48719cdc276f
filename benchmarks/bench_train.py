"""Training throughput, side by side in one run: the medseq loop against plain Keras fit
of the same model, and the input pipeline against what a step consumes.

    python benchmarks/bench_train.py [--patients 120] [--rounds 5] [--examples RECORDS]

1. Keras `fit` of the model `medseq train` builds, on in-memory tensors (no input cost).
2. The medseq loop (strategy.run + GradientTape, the state kept for exact resume) on the
   same in-memory tensors: frames/s against (1), goal >= 1.0.
3. The medseq loop on the real input (records -> tf.data -> augmentation): step time
   against (2), goal <= 1.05.
4. The input pipeline alone: series/s it delivers against series/s a step consumes,
   goal >= 3.

Records come from `--examples` or from `medseq synth --task cine_ef --small` + convert.
Prints a table and writes JSON (benchmarks/results/bench_train.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from medseq.components import ingest, synth
from medseq.components.io.examples import RecordSpec, eval_dataset, record_spec, split_count, split_files
from medseq.components.model.network import build_model
from medseq.components.train.dataset import StreamPosition, train_stream
from medseq.components.train.loop import Trainer, make_strategy
from medseq.pipeline.config import TrainConfig, load_config

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train.json"
Runner = Callable[[], tuple[float, int]]


def make_records(patients: int, tmp: Path) -> Path:
    synth.run("cine_ef", patients, seed=11, out=tmp / "data", small=True)
    config = load_config().on_input(str(tmp / "data" / "dicom"), str(tmp / "data" / "labels.csv"))
    ingest.run(config, ingest.IngestInputs(config.input, config.labels, b"benchmark-key-0123456789"), tmp / "records",
               ["--runner=DirectRunner"])
    return tmp / "records"


def in_memory(records: Path, spec: RecordSpec, batch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    xs, ys = [], []
    for inputs, labels in eval_dataset(split_files(records, "train"), spec, batch):
        xs.append({k: v.numpy() for k, v in inputs.items()})
        ys.append(labels.numpy())
    return {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}, np.concatenate(ys)


def fit_runner(spec: RecordSpec, config: TrainConfig, x: dict[str, np.ndarray], y: np.ndarray) -> Runner:
    """One Keras `fit` epoch over the in-memory tensors per call; returns (seconds, steps)."""
    keras.utils.set_random_seed(config.seed)
    model = build_model(spec, config)
    model.compile(keras.optimizers.Adam(config.learning_rate), keras.losses.SparseCategoricalCrossentropy())
    model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0)  # trace and warm up

    def run() -> tuple[float, int]:
        start = time.perf_counter()
        model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0, shuffle=False)
        return time.perf_counter() - start, len(y) // config.batch_size
    return run


def loop_runner(spec: RecordSpec, config: TrainConfig, batches: tf.data.Dataset, steps: int) -> Runner:
    """`steps` medseq train steps per call; returns (seconds, steps)."""
    strategy = make_strategy(config)
    trainer = Trainer(spec, config, strategy, np.ones(len(spec.classes), np.float32), 10**6)
    iterator = iter(strategy.experimental_distribute_dataset(batches))
    for _ in range(5):
        trainer.train_step(iterator)

    def run() -> tuple[float, int]:
        start = time.perf_counter()
        for _ in range(steps):
            loss = trainer.train_step(iterator)
        float(loss)  # wait for the last step
        return time.perf_counter() - start, steps
    return run


def pipeline_runner(stream: tf.data.Dataset, batch: int, batches: int) -> Runner:
    """`batches` batches of the input pipeline alone per call; returns (seconds, series)."""
    iterator = iter(stream)
    for _ in range(5):
        next(iterator)

    def run() -> tuple[float, int]:
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        return time.perf_counter() - start, batches * batch
    return run


def interleaved(runners: dict[str, Runner], rounds: int) -> dict[str, float]:
    """Seconds per unit of each runner, the median over rounds that take turns (this
    machine is shared and noisy: a slow minute hits every runner alike)."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            seconds, units = run()
            samples[name].append(seconds / units)
    return {name: float(np.median(values)) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=120, help="synthetic cine patients when no --examples")
    parser.add_argument("--examples", help="an existing `medseq convert` output")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of one epoch each")
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args()
    shipped = load_config().train
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(args.examples) if args.examples else make_records(args.patients, Path(tmp))
        spec = record_spec(records)
        config = shipped
        x, y = in_memory(records, spec, config.batch_size)
        frames_per_step = config.batch_size * spec.frames
        memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(config.batch_size, drop_remainder=True).repeat()
        position = StreamPosition(split_count(records, "train"))
        real = train_stream(split_files(records, "train"), spec, config.batch_size, config.seed, position,
                            config.augment)
        steps = len(y) // config.batch_size  # one epoch, as fit runs it
        times = interleaved({
            "fit": fit_runner(spec, config, x, y),
            "loop_memory": loop_runner(spec, config, memory, steps),
            "loop_real": loop_runner(spec, config, real, steps),
            "loop_loose": loop_runner(spec, dataclasses.replace(config, deterministic=False), real, steps),
            "pipeline": pipeline_runner(real, config.batch_size, steps),
        }, args.rounds)
    fit, loop_memory, loop_real, loop_loose = (times[k] for k in ("fit", "loop_memory", "loop_real", "loop_loose"))
    delivered = 1.0 / times["pipeline"]
    consumed = config.batch_size / loop_real
    rows = {
        "keras_fit_frames_per_s": frames_per_step / fit,
        "medseq_loop_memory_frames_per_s": frames_per_step / loop_memory,
        "medseq_loop_real_input_frames_per_s": frames_per_step / loop_real,
        "medseq_loop_real_input_nondeterministic_frames_per_s": frames_per_step / loop_loose,
        "input_pipeline_series_per_s": delivered,
        "training_consumes_series_per_s": consumed,
    }
    ratios = {
        "loop_vs_fit": fit / loop_memory,  # goal >= 1.0
        "input_vs_consumption": delivered / consumed,  # goal >= 3
        "real_vs_memory_step_time": loop_real / loop_memory,  # goal <= 1.05
    }
    print(f"bench_train: {len(y)} train series, {spec.frames}x{spec.height}x{spec.width}x{spec.channels} "
          f"{spec.dtype}, batch {config.batch_size}, encoder {config.encoder} {list(config.conv_filters)}, "
          f"{platform.processor() or platform.machine()}, {tf.config.threading.get_intra_op_parallelism_threads()} "
          "intra-op threads (0: all cores)")
    print(f"{'':44}{'step ms':>9}{'frames/s':>10}")
    for name, step in (("Keras fit, in-memory tensors", fit), ("medseq loop, same tensors", loop_memory),
                       ("medseq loop, real input", loop_real), ("medseq loop, real input, nondeterministic",
                                                                  loop_loose)):
        print(f"{name:44}{step * 1000:9.1f}{frames_per_step / step:10.0f}")
    print(f"input pipeline alone: {delivered:.0f} series/s; a training step consumes {consumed:.0f} series/s")
    print(f"ratio loop/fit (frames/s)        {ratios['loop_vs_fit']:.2f}  (goal >= 1.0)")
    print(f"ratio input/consumption          {ratios['input_vs_consumption']:.1f}  (goal >= 3)")
    print(f"ratio step time real/in-memory   {ratios['real_vs_memory_step_time']:.3f}  (goal <= 1.05)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    summary = {"rates": rows, "ratios": ratios, "series": int(len(y)), "shape": list(spec.shape),
               "batch_size": config.batch_size}
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
