"""Constants shared by the tests (importable as `helpers`: pytest.ini puts tests/ on the path)."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from medseq.components.federate.local import free_ports  # noqa: F401 - shared by the tests
from medseq.pipeline.config import ValueConfig

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_samples"
KEY = b"medseq-test-key-0123456789abcdef"
# One process, fastest for tiny inputs: the runner Beam's DirectRunner ends on, named
# directly (the DirectRunner first probes Prism, leaving a beam-temp folder in /tmp each time).
IN_PROCESS = ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner",
              "--direct_running_mode=in_memory", "--direct_num_workers=1"]
ARTIFACTS = REPO / "runs" / "test-artifacts"  # screenshots of rendered pages (runs/ is git-ignored)
EF = ValueConfig(column="ef", units="%", range=(0.0, 100.0))  # train.value of an ejection fraction


def sample_uids() -> list[str]:
    """The series UIDs of data_samples/cine_ef, in its labels.csv's order."""
    lines = (SAMPLES / "cine_ef" / "labels.csv").read_text().splitlines()[1:]
    return [line.split(",")[0] for line in lines]


def write_values(path: Path, rows: list[tuple[str, str]], header: str = "series_instance_uid,ef") -> str:
    """A labels.csv of a value per series."""
    path.write_text(header + "\n" + "".join(f"{uid},{value}\n" for uid, value in rows))
    return str(path)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def render_in_chromium(page: Path, screenshot: Path, height: int = 2200) -> str:
    """The DOM of `page` as headless Chromium renders it, and a screenshot of it."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={screenshot.parent / f'chromium-profile-{os.getpid()}'}", f"--window-size=1200,{height}"]
    url = page.resolve().as_uri()
    subprocess.run([_chromium(), *flags, f"--screenshot={screenshot}", url], check=True, capture_output=True,
                   timeout=120)
    return subprocess.run([_chromium(), *flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                          timeout=120).stdout


def auc_gate(path: Path, lower: float = 0.0, change: float | None = None, slices: tuple[str, ...] = (),
             per_slice: str = "", gated: bool = True) -> str:
    """Writes a two-class TFMA EvalConfig to `path` and returns the path: AUC at least
    `lower` on the overall slice (and at most `-change` below the baseline), sliced by
    `slices`, with more `per_slice_thresholds` text for AUC; `gated=False`: no threshold."""
    change_text = (f" change_threshold {{ direction: HIGHER_IS_BETTER absolute {{ value: {change} }} }}"
                   if change is not None else "")
    threshold = (f"per_slice_thresholds {{ slicing_specs {{}} threshold {{ value_threshold {{ lower_bound {{ "
                 f"value: {lower} }} }}{change_text} }} }} {per_slice}" if gated else "")
    path.write_text(
        'model_specs { signature_name: "serving_default" label_key: "label" prediction_key: "probability" }\n'
        "slicing_specs {}\n" + "".join(f'slicing_specs {{ feature_keys: ["{s}"] }}\n' for s in slices) +
        'metrics_specs {\n  metrics { class_name: "ExampleCount" }\n  metrics { class_name: "BinaryAccuracy" }\n'
        f'  metrics {{ class_name: "AUC" {threshold} }}\n}}\n')
    return str(path)


def medseq(*args: str, env: dict | None = None, cwd: Path | None = None,
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The `medseq` command in a child process, with the tests' hash key unless `env` is given."""
    import sys

    environment = {**os.environ, "MEDSEQ_HASH_KEY": KEY.decode()} if env is None else env
    return subprocess.run([sys.executable, "-m", "medseq.pipeline.cli", *args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a user mistake prints (exit status 2, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def medseq_run(root: Path, config: dict) -> Path:
    """`medseq run` in this process with `config` (written to ROOT/config.yaml) into ROOT/run."""
    import yaml

    from medseq.pipeline import cli

    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = root / "run"
    assert cli.main(["run", "--config", str(path), "--out", str(run)]) == 0
    return run


def served_answers(run: Path, records: int) -> tuple[Path, dict, list[bytes], dict]:
    """A run's served model: (its folder, its model card, the first `records` eval records,
    what TF Serving's signature answers for them)."""
    import json

    import tensorflow as tf

    from medseq.components.io.examples import split_files
    from medseq.pipeline import features as F

    served = run / "serving" / "medseq" / "1"
    card = json.loads((served / "assets.extra" / "medseq_model.json").read_text())
    signature = tf.saved_model.load(str(served)).signatures[F.SERVING_SIGNATURE]
    examples = [r.numpy() for r in tf.data.TFRecordDataset(split_files(run / "ingest", "eval"),
                                                           compression_type="GZIP").take(records)]
    return served, card, examples, signature(examples=tf.constant(examples))


def convert(config, out, key: bytes = KEY, beam_args=IN_PROCESS):
    """The ingest stage's entry on `config.input` and `config.labels`, with the tests' key."""
    from medseq.components import ingest

    return ingest.run(config, ingest.IngestInputs(config.input, config.labels, key), out, beam_args)


PROBE = "medseq_probe"  # a Beam experiment no runner acts on: it only has to arrive
BEAM_STAGES = ("ingest", "validate", "evaluate")


def record_beam_pipelines(monkeypatch) -> list[tuple[str, list[str], str]]:
    """Every Beam pipeline built from now on, as (the medseq stage that built it, its
    --experiments, its runner): the options a stage really handed to Beam."""
    import traceback

    import apache_beam as beam
    from apache_beam.options.pipeline_options import DebugOptions, StandardOptions

    built: list[tuple[str, list[str], str]] = []
    original = beam.Pipeline.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        files = [frame.filename.replace("\\", "/") for frame in traceback.extract_stack()]
        stage = next((s for s in BEAM_STAGES for f in files if f"/components/{s}/" in f), "?")
        options = self._options
        built.append((stage, list(options.view_as(DebugOptions).experiments or []),
                      str(options.view_as(StandardOptions).runner)))

    monkeypatch.setattr(beam.Pipeline, "__init__", spy)
    return built


CINE = SAMPLES / "cine_ef" / "dicom" / "PA000000" / "ST000000" / "SE000003"  # 18 phases, 48x48
POSITIONS = 3
SLICE_MM = 8.0


def write_cine_sax(root: Path, one_series: bool, drop: int | None = None, runaway_trigger: bool = False) -> str:
    """CINE at POSITIONS slice positions (its pixels rolled by the position, so each
    position looks different), as one series (file names shuffled, instance numbers
    running on across positions) or one series per position. Returns the series UID."""
    rng = random.Random(7)
    files = sorted(CINE.iterdir())
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    written = 0
    for k in range(POSITIONS):
        for n, path in enumerate(files):
            if drop is not None and (k, n) == (1, drop):
                continue
            ds = pydicom.dcmread(path)
            orientation = np.array(ds.ImageOrientationPatient, float)
            normal = np.cross(orientation[:3], orientation[3:])
            ds.ImagePositionPatient = [round(float(v), 4) for v in np.array(ds.ImagePositionPatient, float)
                                       + k * SLICE_MM * normal]
            ds.PixelData = np.roll(ds.pixel_array, 5 * k, axis=1).tobytes()
            ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 1}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = k * len(files) + n + 1 if one_series else n + 1
            if runaway_trigger:
                ds.TriggerTime = float(ds.TriggerTime) + 1000.0 * k
            if not one_series:
                ds.SeriesInstanceUID = f"{uid}.{k + 1}"
            written += 1
            name = f"IM{rng.randrange(10**8):08d}" if one_series else f"S{k}/IM{n:04d}"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(root / name, enforce_file_format=True)
    return uid


def deflate_bomb(source: Path, target: Path, inflated_mb: int) -> None:
    """`source` rewritten deflated, with a private element of `inflated_mb` MB of zeros
    after its pixels: a file of about a thousandth of that size."""
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    written = buffer.getvalue()
    start = 144 + int.from_bytes(written[140:144], "little")  # after the file meta group
    dataset = zlib.decompress(written[start:], -zlib.MAX_WBITS)
    size = inflated_mb << 20
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [written[:start], packer.compress(dataset + b"\xe1\x7f\x10\x10OB\x00\x00" + size.to_bytes(4, "little"))]
    zeros = bytes(1 << 20)
    parts += [packer.compress(zeros) for _ in range(inflated_mb)]
    target.write_bytes(b"".join([*parts, packer.flush()]))
