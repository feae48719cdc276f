"""assets.extra/medseq_model.json: what a served version is, beside it.

Shaped after the `metadata.json` of a MONAI bundle (version, package versions,
network_data_format with inputs and outputs), plus what a reviewer of a served
medical model asks for: the preprocessing, the classes, the fingerprints of the
model and of its training records, and the evaluation that blessed it.
"""

from __future__ import annotations

import datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ...pipeline import features as F

if TYPE_CHECKING:
    from ..export import ExportOutputs

CARD_FILE = "medseq_model.json"
CARD_SCHEMA = "medseq-model-card/1"
PACKAGES = ("medseq", "tensorflow", "keras", "tensorflow-model-analysis", "apache-beam", "pydicom", "numpy",
            "tensorflow-serving-api", "ai-edge-litert", "tf2onnx", "onnxruntime")


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def model_card(spec_json: dict[str, Any], verdict: dict[str, Any], model_name: str, version: int,
               edge: ExportOutputs | None = None) -> dict[str, Any]:
    """The card of `version` from the model's medseq_spec.json and its evaluation verdict;
    `edge` adds its LiteRT and ONNX artifacts."""
    shape = list(spec_json["shape"])
    volumes = len(shape) == 5  # T, D, H, W, C: preprocess.four_d: volumes
    classes = list(spec_json["classes"])
    training = spec_json.get("training", {})
    value = spec_json.get("target") == "value"
    frames = spec_json.get("target") == "frames"
    anomaly = training.get("anomaly") if spec_json.get("target") == "anomaly" else None
    streams = bool((spec_json.get("step") or {}).get("streams"))
    outputs: dict[str, Any] = {F.FRAME_VALUES: {
        "type": "float32", "shape": [shape[0]], "meaning": f"a phase score per frame: 1 at {classes[0]}, 0 at "
        f"{classes[1]}; events are its turning points (medseq predict reads them back)"}} if frames else (
        {F.VALUE: {"type": "float32", "shape": [], "meaning": f"the predicted {spec_json['value'].get('column')}",
                   "units": spec_json["value"].get("units") or ""}} if value else
        {F.ANOMALY_SCORE: {"type": "float32", "shape": [], "meaning": "the share of the series' frame-to-frame "
                           f"change that a model of {anomaly['normal']} series did not foresee; above "
                           f"{anomaly['threshold']:.4g} (passed by {anomaly['false_alarm']:.0%} of the eval split's "
                           f"{anomaly['normal']} series) a series is anomalous"}} if anomaly else
        {F.PROBABILITIES: {"type": "float32", "shape": [len(classes)], "class_names": classes},
         F.CLASS_IDS: {"type": "int32", "meaning": "argmax of probabilities"}})
    kind = ("per-frame event detection" if frames else "regression" if value else "anomaly detection" if anomaly
            else "classification")
    return {
        "schema": CARD_SCHEMA,
        "name": model_name,
        "version": version,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "task": f"{kind} of image series: TimeDistributed CNN per frame, LSTM over the frames",
        # What the model answers: a class, or a value (its labels.csv column, units, range,
        # and the train split's mean and standard deviation).
        "target": {"kind": "value", **spec_json["value"]} if value else {
            "kind": "frames", "events": classes, "causal": bool(training.get("config", {}).get("causal"))}
        if frames else {"kind": "anomaly", **anomaly} if anomaly else {"kind": "class", "classes": classes},
        "package_versions": package_versions(),
        "network_data_format": {
            "inputs": {
                F.FRAMES: {"type": "series of volumes" if volumes else "image series",
                           "format": "T,D,H,W,C" if volumes else "T,H,W,C", "shape": shape,
                           "dtype": spec_json["dtype"], "frame_axis": "time (cine, clips) or space (slice stacks)"},
                F.VALID_FRAMES: {"type": "int32", "meaning": "frames before padding (the LSTM mask)"},
                "examples": {"type": "serialized tf.Example of the record contract (serving_default)"},
            },
            "outputs": outputs,
            "signatures": [F.SERVING_SIGNATURE, F.FRAMES_SIGNATURE, F.EXPLAIN_SIGNATURE,
                           *([F.STEP_SIGNATURE, F.INITIAL_STATE_SIGNATURE] if streams else [])],
        },
        # A causal model's predict_step: its state tensors, their initial value (zeros) and
        # how a client carries them; else why the model cannot stream.
        "streaming": spec_json.get("step") or {"streams": False, "reason": "exported before medseq streamed"},
        "preprocessing": spec_json.get("preprocess", {}),
        # ingest.pixel_phi: the policy on text burned into the pixels (predict applies it
        # too) and what it decided over the training records' ingest.
        "pixel_phi": spec_json.get("pixel_phi", {}),
        "classes": classes,
        "fingerprints": {"model": verdict.get("model_fingerprint"), "training_records": training.get("records")},
        "training": {k: v for k, v in training.items() if k != "records"},
        "evaluation": {k: verdict.get(k) for k in ("decision", "eval_series", "confidence_level", "metrics",
                                                    "intervals", "checks", "not_gated", "notes", "temporal")},
        # push.formats: each artifact in assets.extra/edge/ with its parity figures; the refused, with why.
        "artifacts": [{**a, "file": f"assets.extra/edge/{a['file']}"} for a in edge.artifacts] if edge else [],
        "artifacts_refused": list(edge.refused) if edge else [],
    }
