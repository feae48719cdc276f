"""What each step of the KFP pipeline (pipeline/kfp_pipeline.py) runs inside its container:
one stage of `medseq run`, through the same `stages.*` calls, on the folders KFP hands it
(its artifacts' local paths) instead of a run folder's subfolders.

No import of kfp here: these run wherever medseq is installed, and are tested without
an orchestrator too. Each returns what KFP records of the step (metrics, a decision); a
medseq error ends the step with its one line (SystemExit), as `medseq <stage>` would.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import features as F
from . import stages
from .config import PipelineConfig
from .config import config_from_text as config_of
from .errors import ConfigError, MedseqError

SYNTH_LABELS = {"frames": "frame_labels.csv"}  # the labels file synth writes for a target; else labels.csv


@contextlib.contextmanager
def one_line(stage: str) -> Iterator[None]:
    """A medseq error ends the step with `medseq <stage>: <its one line>` and exit status 1."""
    try:
        yield
    except MedseqError as exc:
        raise SystemExit(f"medseq {stage}: {exc}") from None


def keep(*artifacts: Any) -> None:
    """Each metrics artifact's values also in its file: KFP's local cache counts an
    artifact without a file as missing, and would run the step again."""
    for artifact in artifacts:
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(artifact.path).write_text(json.dumps(artifact.metadata, indent=2) + "\n")


def _key(config: PipelineConfig) -> bytes:
    """ingest.hash_key_file (a mounted secret) or $MEDSEQ_HASH_KEY (a secret as an
    environment variable); one line if neither is set."""
    from ..components.io import deid

    return deid.load_key(config.ingest.hash_key_file)


def input_fingerprint(config_text: str) -> str:
    """What the run's input holds now, as one fingerprint: ingest takes it as a parameter, so
    KFP's cache reuses the records (and every step after them) exactly while it is unchanged,
    and a recurring run does nothing but this step until new data arrives. A folder or file by
    its content and its labels'; a DICOMweb input by the series it lists (QIDO-RS only, each
    series by its keyed hash and number of instances) and its labels'; synthetic data by the
    config's synth section (a parameter already)."""
    with one_line("ingest"):
        config = config_of(config_text)
        if config.synth is not None:
            return "synth"
        if not (config.input and config.labels):
            raise ConfigError("expected `input` and `labels` (your DICOM and its labels.csv) or a `synth` section "
                              "in the config, found neither")
        labels = stages.input_print(config.labels)
        from ..components.ingest.dicomweb.client import is_dicomweb

        if not is_dicomweb(config.input):  # an object store's by its address only (stages.input_print)
            return f"{stages.input_print(config.input)} labels {labels}"
        import hashlib
        import time

        from ..components.ingest.dicomweb import listed_series
        from ..components.ingest.dicomweb.client import Service
        from ..components.io import deid

        key, settings = _key(config), config.ingest.dicomweb
        listed = listed_series(Service(config.input, settings), settings, time.monotonic() + settings.deadline_s)
        held = sorted(f"{deid.keyed_hash(key, 'series', ref.series_uid)}:{ref.instances}" for ref in listed)
        print(f"the DICOMweb input lists {len(held)} series", flush=True)
        return f"dicomweb sha256:{hashlib.sha256(' '.join(held).encode()).hexdigest()} labels {labels}"


def record(run_id: str, run_name: str, config_text: str, serving_dir: str, input_print: str,
           outputs: dict[str, str], decision: str) -> dict[str, Any]:
    """The run's identity, as KFP metadata: its id and name, its parameters (the config's
    fingerprint, the serving folder, the input's fingerprint), each step run or reused from
    KFP's cache (a reused step's artifact lies under an earlier run's folder: its URI names
    neither this run's id nor its name) and the blessing. `outputs`: a step's name -> the
    URI of one of its artifacts."""
    import hashlib

    steps = {step: "ran" if (run_id and run_id in uri) or (run_name and run_name in uri) else "reused"
             for step, uri in outputs.items()}
    made = {"run_id": run_id, "run_name": run_name,
            "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(), "serving_dir": serving_dir,
            "input": input_print, "steps": steps, "decision": decision, "blessed": decision == F.BLESSED}
    ran = [step for step, how in steps.items() if how == "ran"]
    print(f"run {run_id}: {decision}; " + (f"ran {', '.join(ran)}" if ran else "every step reused: nothing new"),
          flush=True)
    return made


def synth(config_text: str, out: str) -> None:
    """The config's `synth` section into `out`: dicom/ and its labels."""
    with one_line("synth"):
        config = config_of(config_text)
        if config.synth is None:
            raise ConfigError("the pipeline has a synth step but the config has no `synth` section")
        from ..components import synth as synthesize

        s = config.synth
        synthesize.run(s.task, s.patients, s.seed, Path(out), small=s.small, target=s.target, noise=s.noise)


def ingest(config_text: str, out: str, synthetic: str | None = None) -> dict[str, float]:
    """DICOM -> records into `out`: the config's `input`/`labels`, or a synth step's output."""
    with one_line("ingest"):
        config = config_of(config_text)
        if synthetic is not None:
            labels = SYNTH_LABELS.get(config.train.records_target, "labels.csv")
            config = config.on_input(str(Path(synthetic) / "dicom"), str(Path(synthetic) / labels))
        if not (config.input and config.labels):
            raise ConfigError("expected `input` and `labels` (your DICOM and its labels.csv) or a `synth` section "
                              "in the config, found neither")
        done = stages.ingest(config, Path(out), _key(config), list(config.ingest.beam_args))
        print(done.summary, flush=True)
        return {f"records_{split}": float(n) for split, n in done.detail["records"].items()}


def validate(config_text: str, records: str, out: str) -> None:
    with one_line("validate"):
        config = config_of(config_text)
        stages.validate(config, Path(records), Path(out), list(config.validate.beam_args))


def train(config_text: str, records: str, out: str) -> dict[str, float]:
    """The model into `out`/model; the best epoch's metrics."""
    with one_line("train"):
        config = config_of(config_text)
        done = stages.train(config, Path(records), Path(out))
        print(done.summary, flush=True)
        history = json.loads((Path(out) / "history.json").read_text()) if (Path(out) / "history.json").exists() else []
        best = int(done.detail.get("best_epoch") or len(history))
        row = history[best - 1] if 0 < best <= len(history) else (history[-1] if history else {})
        return _finite(row)


def evaluate(config_text: str, records: str, model: str, out: str, serving_dir: str) -> dict[str, Any]:
    """The evaluation into `out`: its decision, overall metrics and, for a class target,
    the ROC points and the confusion matrix (what KFP's UI draws)."""
    with one_line("evaluate"):
        config = config_of(config_text)
        model_dir = Path(model) / "model"
        served = _baseline(config, serving_dir, model_dir)
        done = stages.evaluate(config, Path(records), model_dir, Path(out), served, list(config.evaluate.beam_args))
        verdict_file = Path(out) / (F.BLESSED if done.detail["blessed"] else F.NOT_BLESSED)
        verdict = json.loads(verdict_file.read_text())
        return {"decision": verdict["decision"], "reasons": verdict["reasons"],
                "metrics": _finite(verdict["metrics"]),
                **_curves(Path(out), verdict)}


def _finite(values: dict[str, Any]) -> dict[str, float]:
    """The numbers KFP's Metrics can hold: finite ones (a metric undefined on a split is NaN)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}


def _baseline(config: PipelineConfig, serving_dir: str, model_dir: Path) -> Path | None:
    from .fingerprints import tree_fingerprint

    if not serving_dir:
        return None
    served, _ = stages.baseline(Path(serving_dir), config.push.model_name, {"model": tree_fingerprint(model_dir)})
    return served


def _curves(out: Path, verdict: dict[str, Any]) -> dict[str, Any]:
    """A class target's ROC points (of the positive class; one-vs-rest of the first for
    more) and confusion matrix, from the predictions evaluate scored."""
    import numpy as np

    from ..components.evaluate.inference import PREDICTIONS_FILE, EvalPredictions
    from ..components.model.plots import confusion_matrix, roc_points

    preds = EvalPredictions.from_json(json.loads((out / PREDICTIONS_FILE).read_text()))
    if preds.is_value or preds.is_frames:
        return {}
    probs, classes = preds.probs["frames"], verdict["classes"]
    positive = 1 if len(classes) == 2 else 0
    fpr, tpr = roc_points(probs[:, positive], preds.labels == positive)
    thresholds = np.r_[1.0, np.unique(probs[:, positive])[::-1]]  # (0, 0), then each distinct score down
    return {"roc": {"fpr": [float(x) for x in fpr], "tpr": [float(x) for x in tpr],
                    "thresholds": [float(x) for x in thresholds]},
            "confusion": {"classes": list(classes),
                          "matrix": confusion_matrix(probs, preds.labels, len(classes)).astype(int).tolist()}}


def push(config_text: str, records: str, model: str, evaluation: str, serving_dir: str) -> str:
    """A blessed model into `serving_dir` (the TF Serving base folder): the version folder."""
    with one_line("push"):
        from .fingerprints import tree_fingerprint

        config = config_of(config_text)
        if not serving_dir:
            raise ConfigError("push: expected the pipeline's serving_dir (a TF Serving model base folder), found none")
        model_dir = Path(model) / "model"
        done = stages.push(config, model_dir, {"model": tree_fingerprint(model_dir)}, Path(evaluation),
                           Path(serving_dir), Path(records))
        print(done.summary, flush=True)
        return str(done.detail.get("served", ""))
