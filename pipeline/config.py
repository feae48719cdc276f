"""Typed pipeline configuration: frozen dataclasses, validated once when loaded.

The shipped default is `schemas/pipeline.yaml`. Relative paths in a config file are
resolved against the folder of that file, so the shipped config finds `data_samples/`
wherever medseq is installed.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..components.io.storage import remote
from .errors import ConfigError
from .typed import check_choice, from_dict, section_of, to_dict  # noqa: F401 - to_dict re-exported

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
DEFAULT_CONFIG = SCHEMAS_DIR / "pipeline.yaml"
DEFAULT_SCHEMA = SCHEMAS_DIR / "record_schema.pbtxt"
DEFAULT_EVAL_CONFIG = SCHEMAS_DIR / "eval_config.pbtxt"  # two classes
DEFAULT_EVAL_CONFIG_MULTICLASS = SCHEMAS_DIR / "eval_config_multiclass.pbtxt"  # three or more
DEFAULT_EVAL_CONFIG_VALUE = SCHEMAS_DIR / "eval_config_value.pbtxt"  # train.target: value
DEFAULT_EVAL_CONFIG_FRAMES = SCHEMAS_DIR / "eval_config_frames.pbtxt"  # train.target: frames

DTYPES = ("uint8", "float16", "float32")
TEMPORAL_MODES = ("sample", "pad")
STACK_MODES = ("average", "sample", "pad")
SEQUENCE_MODELS = ("lstm", "mean_pool")
FOUR_D_MODES = ("per_position", "volumes", "reject")
COLOR_MODES = ("gray", "rgb")
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")
AUGMENTATIONS = ("flip", "rot90", "roll")
ENCODERS = ("small_cnn", "mobilenet_v3_small", "efficientnet_b0")
LR_SCHEDULES = ("constant", "cosine")
MONITOR_MODES = ("auto", "max", "min")
# train.target: a class per series, a number per series (e.g. EF %), or events per frame
# (key frames such as end-diastole and end-systole, from frame_labels.csv).
RECORD_TARGETS = ("class", "value", "frames")  # what records carry (and synth writes)
# anomaly: a model of the normal class's series alone, trained on class records, that
# scores how far a series departs from them (train.anomaly).
TARGETS = (*RECORD_TARGETS, "anomaly")
VALUE_LOSSES = ("huber", "mse")
# Eval metrics where lower is better (train.monitor_mode: auto picks min for them).
LOWER_IS_BETTER = ("eval_loss", "eval_mae", "eval_rmse", "eval_event_error", "eval_prediction_error")
# `medseq synth --task` and synth.task: the synthetic tasks (components/synth/tasks.py makes them).
SYNTH_TASKS = ("cine_ef", "cine_ef3", "cine_phase", "cine_sax", "ct_nodule", "dce_kinetics")
# `medseq export` and push.formats: the precisions each format offers. Measured and left
# out (README, "Edge and portable export"): full int8 LiteRT and dynamic int8 ONNX failed
# their gates; ONNX fp16 needs onnxconverter-common, which is not installed.
EXPORT_FORMATS = {"litert": ("fp32", "fp16", "dynamic_int8"), "onnx": ("fp32",)}
OFFERED_EXPORTS = ", ".join(f"{f}:{p}" for f, ps in EXPORT_FORMATS.items() for p in ps)


def export_format(value: str, where: str = "push.formats") -> tuple[str, str]:
    """"litert:fp32" -> ("litert", "fp32"), one of EXPORT_FORMATS."""
    fmt, _, precision = value.partition(":")
    if precision not in EXPORT_FORMATS.get(fmt, ()):
        raise ConfigError(f"{where}: expected FORMAT:PRECISION, one of {OFFERED_EXPORTS}; found {value!r}")
    return fmt, precision
MIXED_PRECISION = ("off", "mixed_float16", "mixed_bfloat16")
CLASS_WEIGHTS = ("none", "auto")
FRAME_STRIPS = ("synthetic", "on", "off")
KEEP_OR_REJECT = ("reject", "keep")
REGION_MODES = ("crop", "mask", "off")
AGGREGATORS = ("fedavg", "fedavgm", "fedprox", "fedmedian", "trimmed_mean")
SITE_OPTIMIZERS = ("keep", "fresh")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a decoded series becomes a T x H x W x C tensor (the one shared function)."""

    frames: int = 16
    height: int = 64
    width: int = 64
    # Along the frame axis. Series in time (cine, clips): `temporal`. Slice stacks
    # (frames at distinct positions along the slice normal): `stack`, where picking
    # slices would step over a structure a few slices thick; `average` is thick-slab
    # averaging (area weights) down to T and keeps every slice (padded, masked) up to T.
    temporal: str = "sample"
    stack: str = "average"
    # A 4-D series (several times at each slice position: multi-slice cine, DCE,
    # perfusion): `per_position` makes one time-series record per slice position (they
    # share the series' label, patient and split); `volumes` one record per series, a
    # sequence of T volumes of `depth` positions (T x D x H x W x C; every record of the
    # set then has that shape: a series at one position fills D with it, a slice stack
    # is one volume); `reject` rejects it (duplicate_position).
    four_d: str = "per_position"
    depth: int = 8  # D under four_d: volumes (positions resampled along the slice normal)
    dtype: str = "uint8"
    color: str = "gray"
    # Per modality, one entry per output channel: "C/W" (fixed window, e.g. "40/400"),
    # "header" (the series' own VOI window, percentile if absent) or "percentile".
    windows: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"CT": ("40/400",), "default": ("percentile",)}
    )
    percentiles: tuple[float, float] = (0.5, 99.5)
    min_frames: int = 1

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "depth", "min_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"preprocess.{name}: expected a positive integer, found {getattr(self, name)}")
        check_choice("preprocess.dtype", self.dtype, DTYPES)
        check_choice("preprocess.temporal", self.temporal, TEMPORAL_MODES)
        check_choice("preprocess.stack", self.stack, STACK_MODES)
        check_choice("preprocess.four_d", self.four_d, FOUR_D_MODES)
        check_choice("preprocess.color", self.color, COLOR_MODES)
        if "default" not in self.windows:
            raise ConfigError("preprocess.windows: expected a 'default' entry for other modalities")
        counts = {len(v) for v in self.windows.values()}
        if len(counts) != 1 or 0 in counts:
            raise ConfigError(
                "preprocess.windows: every modality needs the same, non-zero number of windows "
                f"(one per channel); found {dict((k, len(v)) for k, v in self.windows.items())}"
            )
        for modality, specs in self.windows.items():
            for spec in specs:
                parse_window(spec, f"preprocess.windows.{modality}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ConfigError(f"preprocess.percentiles: expected 0 <= low < high <= 100, found {self.percentiles}")

    @property
    def volumes(self) -> bool:
        """Records are sequences of volumes (T x D x H x W x C)."""
        return self.four_d == "volumes"

    @property
    def channels(self) -> int:
        per_window = next(iter(self.windows.values()))
        return len(per_window) * (3 if self.color == "rgb" else 1)

    def windows_for(self, modality: str) -> tuple[str, ...]:
        return self.windows.get(modality, self.windows["default"])


def parse_window(spec: str, where: str = "window") -> tuple[float, float] | str:
    """'40/400' -> (40.0, 400.0); 'header' and 'percentile' pass through."""
    if spec in ("header", "percentile"):
        return spec
    try:
        center, width = (float(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(
            f"{where}: expected 'center/width' (e.g. '40/400'), 'header' or 'percentile', found {spec!r}"
        ) from None
    if width <= 0:
        raise ConfigError(f"{where}: window width must be positive, found {spec!r}")
    return center, width


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.8
    eval: float = 0.1
    test: float = 0.1
    # Public salt of the patient -> split bucket hash. Independent of the secret key, so
    # rotating the key never moves a patient to another split.
    salt: str = "medseq-split-v1"

    def __post_init__(self) -> None:
        parts = (self.train, self.eval, self.test)
        if min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
            raise ConfigError(f"ingest.split: expected fractions >= 0 that sum to 1, found {parts}")


@dataclass(frozen=True)
class PixelPhiConfig:
    """Text burned into the pixels (ingest.pixel_phi): what DICOM says of it, and what
    ingest and `medseq predict` then do (components/preprocessing/pixel_phi.py)."""

    # Burned In Annotation (0028,0301) YES: the file says its pixels carry identifying text.
    burned_in_annotation: str = "reject"
    # Secondary captures (the SC SOP classes) and converted images (a Conversion Type such
    # as WSD, SYN, DRW): screenshots and scanned documents, text likely anywhere.
    secondary_capture: str = "reject"
    # Ultrasound listing its imaging regions (Sequence of Ultrasound Regions): `crop` keeps
    # the bounding box of their union and zeroes what lies outside the regions inside it,
    # `mask` zeroes everything outside them at the image's size, `off` keeps every pixel.
    ultrasound_regions: str = "crop"

    def __post_init__(self) -> None:
        check_choice("ingest.pixel_phi.burned_in_annotation", self.burned_in_annotation, KEEP_OR_REJECT)
        check_choice("ingest.pixel_phi.secondary_capture", self.secondary_capture, KEEP_OR_REJECT)
        check_choice("ingest.pixel_phi.ultrasound_regions", self.ultrasound_regions, REGION_MODES)


SAFE_PIXEL_PHI = PixelPhiConfig()  # the defaults: what a caller that names no policy gets


@dataclass(frozen=True)
class DicomwebConfig:
    """A DICOMweb input (`--input https://host/dicom-web`): which series QIDO-RS finds, and
    how gently WADO-RS fetches them (components/ingest/dicomweb.py). Credentials are
    never here: $MEDSEQ_DICOMWEB_TOKEN or $MEDSEQ_DICOMWEB_USER and _PASSWORD (or *_FILE)."""

    modality: str = ""  # series-level Modality, e.g. CT
    study_date: str = ""  # YYYYMMDD or a range YYYYMMDD-YYYYMMDD
    # Any other QIDO-RS study attribute: {keyword or tag: value}, e.g. {StudyDescription: "CARDIAC*"}
    filters: Mapping[str, str] = field(default_factory=dict)
    # A CSV with a study_instance_uid or accession_number column: only those studies.
    studies_csv: str | None = None
    page_size: int = 100  # QIDO-RS limit per request
    concurrency: int = 2  # series fetched at once: a hospital's production archive
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0  # between two bytes of a response, not for the whole of it
    retries: int = 6  # on connection errors, timeouts, 408, 429 and 5xx, after the first try
    backoff_s: float = 1.0  # the first wait; doubled each try, full jitter, Retry-After honoured
    max_backoff_s: float = 60.0
    allow_http: bool = False  # plain http:// to a host that is not a loopback address
    # Bounds on what the archive may cost (a broken or hostile one): one QIDO-RS answer is
    # read into at most max_response_mb (else the job stops: lower page_size); one WADO-RS
    # part (an instance) past max_instance_mb, or a series still arriving after
    # series_timeout_s (its tries together), is a fetch_failed dead letter; the series not
    # fetched when the fetch has run deadline_s are dead letters too (a rerun fetches them).
    max_response_mb: float = 16.0
    max_instance_mb: float = 1024.0
    series_timeout_s: float = 3600.0
    deadline_s: float = 86400.0
    # Where fetched series are kept between runs (one folder per output); None:
    # $XDG_CACHE_HOME/medseq/dicomweb (~/.cache/medseq/dicomweb). It holds the archive's
    # files as they are (identifiers included): never inside the output folder.
    cache_dir: str | None = None

    def selection(self) -> dict[str, Any]:
        """What decides which series are fetched (recorded in qc.json); the transport
        settings and the cache's path, which do not change a record, are left out."""
        return {"modality": self.modality, "study_date": self.study_date, "filters": dict(self.filters),
                "studies_csv": "<studies_csv>" if self.studies_csv else None}

    def __post_init__(self) -> None:
        if self.page_size < 1 or self.concurrency < 1 or self.retries < 0:
            raise ConfigError(f"ingest.dicomweb: expected page_size >= 1, concurrency >= 1 and retries >= 0, found "
                              f"{self.page_size}, {self.concurrency}, {self.retries}")
        if min(self.connect_timeout_s, self.read_timeout_s, self.max_backoff_s, self.max_response_mb,
               self.max_instance_mb, self.series_timeout_s, self.deadline_s) <= 0 or self.backoff_s < 0:
            raise ConfigError("ingest.dicomweb: expected timeouts, deadlines, max_backoff_s and the _mb limits > 0, "
                              "backoff_s >= 0")
        if self.study_date and not re.fullmatch(r"\d{8}|\d{8}-\d{8}|-\d{8}|\d{8}-", self.study_date):
            raise ConfigError(f"ingest.dicomweb.study_date: expected YYYYMMDD or YYYYMMDD-YYYYMMDD, found "
                              f"{self.study_date!r}")


@dataclass(frozen=True)
class IngestConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    num_shards: int = 0  # 0: chosen from shard_size_mb
    shard_size_mb: float = 64.0
    hash_key_file: str | None = None
    # Class names in index order; empty: the sorted labels of labels.csv. Fix them to
    # keep class indices stable across label files; other labels are then rejected.
    classes: tuple[str, ...] = ()
    # A file whose pixels take longer to decode is rejected as decode_timeout. Measured
    # around the decoder: it bounds slow files, not a decoder that never returns.
    decode_timeout_s: float = 30.0
    # A deflated data set (untrusted input) inflates to at most this much; a larger one is
    # rejected as inflate_limit before it is held in memory. 1 GB holds any real series file.
    max_inflated_mb: float = 1024.0
    # A file whose pixels decode to more (Rows x Columns x frames x samples x bytes), or a
    # series whose kept frames take more as float32, is rejected as decoded_size_limit
    # before anything is decoded (components/preprocessing/limits.py). 1 GB holds a
    # 1,000-slice CT stack; memory at the limit is about three times it.
    max_decoded_mb: float = 1024.0
    # Applied in ingest and, from the model's spec, in `medseq predict` alike.
    pixel_phi: PixelPhiConfig = field(default_factory=PixelPhiConfig)
    dicomweb: DicomwebConfig = field(default_factory=DicomwebConfig)  # used when the input is a DICOMweb URL
    beam_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.num_shards < 0 or min(self.shard_size_mb, self.decode_timeout_s, self.max_inflated_mb,
                                      self.max_decoded_mb) <= 0:
            raise ConfigError("ingest: num_shards must be >= 0, shard_size_mb, decode_timeout_s, max_inflated_mb and "
                              "max_decoded_mb > 0")


@dataclass(frozen=True)
class ValidateConfig:
    schema: str | None = None  # None: schemas/record_schema.pbtxt
    max_label_linf: float = 0.3
    # Records of a value target: the eval values' mean may lie at most this many train
    # standard deviations from the train values' mean (target_skew).
    max_target_shift: float = 0.5
    infer_schema: bool = False  # also write OUT/schema.pbtxt inferred from the train split
    beam_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValueConfig:
    """`train.target: value`: a number per series (an ejection fraction in %, a volume),
    read from a column of labels.csv by ingest and learned by a linear head."""

    column: str = "value"  # the labels.csv column holding the number, e.g. ef
    units: str = ""  # e.g. "%": shown in the report, predict's output and the model card
    # Values outside [low, high] are rejected rows (label_out_of_range); None: any finite number.
    range: tuple[float, float] | None = None
    loss: str = "huber"  # huber | mse, on the value standardized by the train split's mean and spread

    def __post_init__(self) -> None:
        check_choice("train.value.loss", self.loss, VALUE_LOSSES)
        if not self.column.strip():
            raise ConfigError("train.value.column: expected the name of a labels.csv column, found an empty name")
        if self.range is not None and not (len(self.range) == 2 and self.range[0] < self.range[1]):
            raise ConfigError(f"train.value.range: expected [low, high] with low < high, found {list(self.range)}")


@dataclass(frozen=True)
class AnomalyConfig:
    """`train.target: anomaly`: a model of normal series alone, that flags the others.

    Trained on the records of the class `normal` (labels.csv's label) only: its LSTM
    predicts each next frame (coarse, 8 x 8 per frame) from the frames before it. A
    series' `anomaly_score` is the share of its frame-to-frame change that the model of
    normal motion does not predict (its prediction error over the error of "no change");
    the threshold is set on the normal series of the eval split at
    `train.domain_false_alarm`. The other classes are what it should flag: evaluate
    measures the score's AUC of normal against them on held-out patients."""

    normal: str = "normal"

    def __post_init__(self) -> None:
        if not self.normal.strip():
            raise ConfigError("train.anomaly.normal: expected the class name of the normal series, found an "
                              "empty name")


@dataclass(frozen=True)
class FramesConfig:
    """`train.target: frames`: events at key frames (frame_labels.csv: a series key, `frame`
    or `time_ms`, and the event's name), learned per frame. Between an event of
    `events[0]` (end-diastole) and one of `events[1]` (end-systole) every frame gets a
    phase score that runs linearly from 1 to 0 and back (EchoPhaseDetection's dense
    target); frames outside the labeled span carry no loss. An event is read back as a
    turning point of the predicted score: a maximum for events[0], a minimum for events[1]."""

    events: tuple[str, str] = ("ed", "es")
    loss: str = "huber"  # huber | mse, on the phase score

    def __post_init__(self) -> None:
        check_choice("train.frames.loss", self.loss, VALUE_LOSSES)
        if len(self.events) != 2 or len(set(self.events)) != 2 or not all(str(e).strip() for e in self.events):
            raise ConfigError(f"train.frames.events: expected two different event names (the score's maximum, "
                              f"then its minimum, e.g. [ed, es]), found {list(self.events)}")


@dataclass(frozen=True)
class TrainConfig:
    """The model and its training loop (components/train). Defaults: schemas/pipeline.yaml."""

    epochs: int = 8
    batch_size: int = 8
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (decays to 0 over all steps)
    strategy: str = "default"
    tpu: str | None = None
    # Frame encoder: the small CNN (conv_filters) or a keras.applications backbone built
    # with weights=None; `encoder_weights` loads a local weights file (never a download).
    encoder: str = "small_cnn"
    encoder_weights: str | None = None
    conv_filters: tuple[int, ...] = (16, 32, 64)
    # Each frame also carries its difference from the previous frame (model.FrameDifference).
    frame_difference: bool = True
    # The LSTM reads frame features standardized over their sequence, plus the
    # sequence's mean and spread of them (model.SequenceStandardization).
    sequence_norm: bool = True
    # How the frame features become one: `lstm` reads them in order; `mean_pool` averages
    # them over the valid frames, blind to their order (a control: what order adds).
    sequence_model: str = "lstm"
    lstm_layers: int = 1
    lstm_units: int = 32
    bidirectional: bool = False
    dropout: float = 0.2  # on the frame features and between/after the LSTM layers
    # none | auto (inverse class frequency of the train split) | {class name: weight}
    class_weight: str | Mapping[str, float] = "none"
    seed: int = 0
    augment: tuple[str, ...] = ()  # flip, rot90, roll (see components/train/augment.py)
    checkpoint_every_steps: int = 50  # also at every epoch end; 0: epoch ends only
    # What the model answers per series: `class` (labels.csv's label column) or `value`
    # (a number from the column train.value.column).
    target: str = "class"
    value: ValueConfig = field(default_factory=ValueConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    # An answer at frame t from frames <= t only (train.target: frames): a unidirectional
    # LSTM, frame features standardized by the statistics of the frames so far, the
    # difference from the previous frame; what a live clip can be read with.
    causal: bool = False
    # The eval metric that picks the exported checkpoint; auto: eval_auc for a class
    # target, eval_mae for a value. monitor_mode auto: min for a loss or an error, else max.
    monitor: str = "auto"
    monitor_mode: str = "auto"
    patience: int = 0  # epochs without improvement before stopping; 0: never stop early
    # The weights evaluated each epoch and exported: their exponential moving average over
    # the steps at this momentum (Keras' optimizer EMA, e.g. 0.99); 0: the weights as they are.
    ema: float = 0.0
    # Test-time augmentation: every answer the mean over the symmetries in `augment` (flip,
    # rot90: up to the eight of a square frame), in eval, serving and the LiteRT/ONNX
    # artifacts (model/tta.py); one model pass per symmetry.
    tta: bool = False
    mixed_precision: str = "off"
    jit_compile: bool = False
    deterministic: bool = True  # tf.config.experimental.enable_op_determinism()
    # The share of the eval split whose domain score (the distance of the model's own
    # sequence embedding from the train split's) lies above the threshold predict flags at.
    domain_false_alarm: float = 0.05

    def __post_init__(self) -> None:
        check_choice("train.strategy", self.strategy, STRATEGIES)
        check_choice("train.target", self.target, TARGETS)
        if self.target == "anomaly" and (self.bidirectional or self.sequence_model != "lstm"):
            raise ConfigError("train.target: anomaly predicts each next frame from the frames before it; expected a "
                              f"unidirectional lstm (bidirectional: false, sequence_model: lstm), found bidirectional "
                              f"{str(self.bidirectional).lower()}, sequence_model {self.sequence_model}")
        if self.causal and (self.target != "frames" or self.bidirectional or self.sequence_model != "lstm"):
            raise ConfigError("train.causal: expected target: frames with a unidirectional lstm (bidirectional: "
                              f"false, sequence_model: lstm), found target {self.target}, bidirectional "
                              f"{str(self.bidirectional).lower()}, sequence_model {self.sequence_model}")
        if not 0 < self.domain_false_alarm < 0.5:
            raise ConfigError(f"train.domain_false_alarm: expected a share in (0, 0.5), "
                              f"found {self.domain_false_alarm}")
        check_choice("train.encoder", self.encoder, ENCODERS)
        check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("train.monitor_mode", self.monitor_mode, MONITOR_MODES)
        check_choice("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        check_choice("train.sequence_model", self.sequence_model, SEQUENCE_MODELS)
        if self.sequence_model == "mean_pool" and self.frame_difference:
            raise ConfigError("train.sequence_model: mean_pool is blind to the order of the frames; expected "
                              "frame_difference: false beside it (a difference from the previous frame carries order)")
        for op in self.augment:
            check_choice("train.augment", op, AUGMENTATIONS)
        if isinstance(self.class_weight, str):
            check_choice("train.class_weight", self.class_weight, CLASS_WEIGHTS)
        elif any(w < 0 for w in self.class_weight.values()):
            raise ConfigError(f"train.class_weight: expected weights >= 0, found {dict(self.class_weight)}")
        for name in ("epochs", "batch_size", "lstm_layers", "lstm_units"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: expected a positive integer, found {getattr(self, name)}")
        if not self.conv_filters or min(self.conv_filters) < 1:
            raise ConfigError(f"train.conv_filters: expected positive filter counts, found {self.conv_filters}")
        if self.checkpoint_every_steps < 0 or self.patience < 0:
            raise ConfigError("train: checkpoint_every_steps and patience must be >= 0")
        if self.tta and (self.causal or self.target == "anomaly" or not {"flip", "rot90"} & set(self.augment)):
            raise ConfigError("train.tta: the answer averaged over train.augment's flip and rot90 (a causal model's "
                              "frame-by-frame step and an anomaly model's threshold read one pass); expected flip or "
                              f"rot90 in augment, causal: false and a class, value or frames target, found augment "
                              f"{list(self.augment)}, causal {str(self.causal).lower()}, target {self.target}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"train.ema: expected a momentum in [0, 1) (0: off), found {self.ema}")
        if not 0 <= self.dropout < 1 or self.learning_rate <= 0:
            raise ConfigError(f"train: expected 0 <= dropout < 1 and learning_rate > 0, found "
                              f"dropout {self.dropout}, learning_rate {self.learning_rate}")
        if self.jit_compile and self.deterministic:
            raise ConfigError("train.jit_compile: XLA has no deterministic kernels for this model (MaxPool "
                              "gradients); expected deterministic: false beside jit_compile: true")
        if self.monitor != "auto" and not self.monitor.startswith("eval_"):
            raise ConfigError(f"train.monitor: expected auto or an eval metric (eval_auc, eval_loss, eval_accuracy; "
                              "eval_mae, eval_rmse, eval_r2 for a value; eval_event_error, eval_frame_mae for "
                              f"frames), found {self.monitor!r}")

    @property
    def records_target(self) -> str:
        """What the records of this target carry: an anomaly model trains on class records."""
        return "class" if self.target == "anomaly" else self.target

    @property
    def monitored(self) -> tuple[str, str]:
        """(the eval metric that picks the exported checkpoint, max or min)."""
        auto = {"value": "eval_mae", "frames": "eval_event_error", "anomaly": "eval_prediction_error"}.get(
            self.target, "eval_auc")
        name = self.monitor if self.monitor != "auto" else auto
        mode = self.monitor_mode if self.monitor_mode != "auto" else ("min" if name in LOWER_IS_BETTER else "max")
        return name, mode


@dataclass(frozen=True)
class EvaluateConfig:
    # A TFMA EvalConfig text proto; None: schemas/eval_config.pbtxt for two classes,
    # schemas/eval_config_multiclass.pbtxt for more (by the classes in qc.json).
    eval_config: str | None = None
    # Value thresholds must hold for the whole confidence interval (a seeded bootstrap
    # over series), not only for the point estimate.
    gate_on_interval: bool = True
    confidence_level: float = 0.95
    bootstrap_samples: int = 1000
    # Slices with fewer series are reported but not gated (the overall slice always is).
    min_slice_size: int = 20
    # When set: refuse a model whose AUC with one frame repeated is not at least this much lower.
    temporal_min_drop: float | None = None
    # A value target: the AUC of the predicted value at each finding "value < cut-off"
    # (clinical cut-offs such as EF < 40 and < 50), reported as auc_below_<cut-off>.
    value_cutoffs: tuple[float, ...] = ()
    seed: int = 0  # bootstrap resamples and the frame shuffle of the temporal check
    beam_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence_level < 1 or self.bootstrap_samples < 100 or self.min_slice_size < 1:
            raise ConfigError(f"evaluate: expected 0.5 <= confidence_level < 1, bootstrap_samples >= 100 and "
                              f"min_slice_size >= 1, found {self.confidence_level}, {self.bootstrap_samples}, "
                              f"{self.min_slice_size}")


@dataclass(frozen=True)
class ExportConfig:
    """The parity gate of every LiteRT/ONNX artifact (`medseq export`, and push.formats):
    an artifact is written only if, under its own runtime, its largest |Δp| against the
    SavedModel is within its precision's tolerance and its eval AUC changes by at least
    `min_auc_change`; the change's paired bootstrap interval is reported beside it."""

    tolerance: Mapping[str, float] = field(
        default_factory=lambda: {"fp32": 1e-5, "fp16": 1e-3, "dynamic_int8": 1e-2})
    min_auc_change: float = -0.01
    confidence_level: float = 0.95
    bootstrap_samples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        offered = {p for ps in EXPORT_FORMATS.values() for p in ps}
        if set(self.tolerance) != offered or not all(0 < v < 1 for v in self.tolerance.values()):
            raise ConfigError(f"export.tolerance: expected a value in (0, 1) for each of {', '.join(sorted(offered))}, "
                              f"found {dict(self.tolerance)}")
        if not 0.5 <= self.confidence_level < 1 or self.bootstrap_samples < 100 or not -1 <= self.min_auc_change <= 0:
            raise ConfigError(f"export: expected 0.5 <= confidence_level < 1, bootstrap_samples >= 100 and "
                              f"-1 <= min_auc_change <= 0, found {self.confidence_level}, {self.bootstrap_samples}, "
                              f"{self.min_auc_change}")


@dataclass(frozen=True)
class DifferentialPrivacyConfig:
    """`federate.dp`: differential privacy of the federated model (central DP with
    client-side clipping). Each site clips the change its round made to the weights to
    `clipping_norm` (L2 over every weight); the coordinator adds Gaussian noise of standard
    deviation noise_multiplier * clipping_norm / sites to their mean. The privacy spent,
    epsilon at `delta`, is accounted over the rounds by Flower's RDP accountant
    (dp-accounting): one release per round, neighbouring federations differing by one
    site, no amplification by sampling. noise_multiplier 0: off."""

    noise_multiplier: float = 0.0
    clipping_norm: float = 1.0
    delta: float = 1e-5
    max_epsilon: float | None = None  # the run is refused before it starts if its rounds would spend more

    @property
    def on(self) -> bool:
        return self.noise_multiplier > 0

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.clipping_norm <= 0 or not 0 < self.delta < 1 \
                or (self.max_epsilon is not None and self.max_epsilon <= 0):
            raise ConfigError(f"federate.dp: expected noise_multiplier >= 0, clipping_norm > 0, 0 < delta < 1 and "
                              f"max_epsilon > 0 or null, found {self.noise_multiplier}, {self.clipping_norm}, "
                              f"{self.delta}, {self.max_epsilon}")


@dataclass(frozen=True)
class FederateConfig:
    """`medseq federate run`: sites train the model together through Flower, each on its
    own records; only weights and aggregate metrics leave a site (components/federate)."""

    rounds: int = 5
    local_epochs: int = 1  # over the site's train split, per round
    min_sites: int = 2  # a round needs this many sites' answers; fewer fail the run
    # fedavg (weighted by train records) | fedavgm (fedavg's update through server momentum)
    # | fedprox (fedavg, each site's loss + mu/2 |w - w_global|^2)
    # | fedmedian (coordinate-wise median) | trimmed_mean (trim_fraction of each end dropped)
    aggregator: str = "fedavg"
    server_momentum: float = 0.9  # fedavgm
    proximal_mu: float = 0.01
    trim_fraction: float = 0.2
    round_timeout_s: float = 900.0  # a site silent this long is left out of the round
    # fresh: every round starts a fresh optimizer at each site; keep: each site's optimizer
    # state (Adam's moments, saved at the site) carries over to its next round of the same
    # run, as centralized training's does between epochs (bench_federated: no better).
    site_optimizer: str = "fresh"
    dp: DifferentialPrivacyConfig = field(default_factory=DifferentialPrivacyConfig)

    def __post_init__(self) -> None:
        check_choice("federate.aggregator", self.aggregator, AGGREGATORS)
        check_choice("federate.site_optimizer", self.site_optimizer, SITE_OPTIMIZERS)
        if self.dp.on and self.aggregator not in ("fedavg", "fedprox"):
            raise ConfigError(f"federate.dp: the privacy accounting holds for a mean of the sites' clipped updates; "
                              f"expected aggregator fedavg or fedprox, found {self.aggregator}")
        if self.rounds < 1 or self.local_epochs < 1 or self.min_sites < 1 or self.round_timeout_s <= 0 \
                or self.proximal_mu < 0 or not 0 <= self.trim_fraction < 0.5 or not 0 <= self.server_momentum < 1:
            raise ConfigError(f"federate: expected rounds, local_epochs and min_sites >= 1, round_timeout_s > 0, "
                              f"proximal_mu >= 0, 0 <= trim_fraction < 0.5 and 0 <= server_momentum < 1, found "
                              f"{self.rounds}, {self.local_epochs}, {self.min_sites}, {self.round_timeout_s}, "
                              f"{self.proximal_mu}, {self.trim_fraction}, {self.server_momentum}")


@dataclass(frozen=True)
class PushConfig:
    serving_dir: str = "serving"  # relative to the run folder
    model_name: str = "medseq"
    keep_versions: int = 3  # older versions are removed once the new one is in place; 0: keep all
    warmup_batch_sizes: tuple[int, ...] = (1, 8)  # one synthetic warm-up request per signature and size
    # Edge artifacts shipped beside the SavedModel (assets.extra/edge/), each behind its
    # parity gate: FORMAT:PRECISION, litert:{fp32,fp16,dynamic_int8}, onnx:fp32.
    formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for value in self.formats:
            export_format(value)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.model_name) or ".." in self.model_name:
            raise ConfigError(f"push.model_name: expected a folder name of letters, digits, '_', '-', '.', "
                              f"found {self.model_name!r}")
        if not Path(self.serving_dir).is_absolute() and ".." in Path(self.serving_dir).parts:
            raise ConfigError(f"push.serving_dir: expected a folder inside the run folder or an absolute path, "
                              f"found {self.serving_dir!r}")
        if self.keep_versions < 0 or not self.warmup_batch_sizes or min(self.warmup_batch_sizes) < 1:
            raise ConfigError(f"push: expected keep_versions >= 0 and positive warmup_batch_sizes, found "
                              f"{self.keep_versions} and {list(self.warmup_batch_sizes)}")


@dataclass(frozen=True)
class ReportConfig:
    """RUN/report.html of `medseq run`."""

    # Frame strips (a few frames of one eval series per class) show pixels, and real
    # pixels can carry burned-in identifiers: `synthetic` shows them only for data the
    # run generated itself (a `synth` section), `on` always, `off` never.
    frame_strips: str = "synthetic"

    def __post_init__(self) -> None:
        check_choice("report.frame_strips", self.frame_strips, FRAME_STRIPS)


@dataclass(frozen=True)
class SynthConfig:
    """`medseq run` on synthetic data: `medseq synth` writes it into RUN/synth first."""

    task: str = "cine_ef"
    patients: int = 200
    seed: int = 0
    small: bool = True
    # value (cine_ef): labels.csv also holds `ef`, the EF in % (train.target: value);
    # frames (cine_phase): the run reads frame_labels.csv, its ED and ES frames (train.target: frames)
    target: str = "class"
    noise: float = 0.0  # EF points of measurement noise on `ef`

    def __post_init__(self) -> None:
        check_choice("synth.task", self.task, SYNTH_TASKS)
        check_choice("synth.target", self.target, RECORD_TARGETS)
        if self.target == "value" and self.task != "cine_ef":
            raise ConfigError(f"synth.target: value is written for cine_ef, found task {self.task}")
        if self.target == "frames" and self.task != "cine_phase":
            raise ConfigError(f"synth.target: frames is written for cine_phase, found task {self.task}")
        if self.patients < 1:
            raise ConfigError(f"synth.patients: expected a positive integer, found {self.patients}")

    def command(self, out: str) -> str:
        value = f" --target value --noise {self.noise:g}" if self.target == "value" else ""
        value = " --target frames" if self.target == "frames" else value
        return (f"medseq synth --task {self.task} --patients {self.patients} --seed {self.seed}"
                f"{' --small' if self.small else ''}{value} --out {out}")


@dataclass(frozen=True)
class PipelineConfig:
    # The DICOM input of `medseq run`: a folder (or glob) and its labels.csv (a
    # frame_labels.csv for train.target: frames), or else `synth`, synthetic data
    # generated into the run folder (the Quickstart's default).
    input: str = ""
    labels: str = ""
    synth: SynthConfig | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    push: PushConfig = field(default_factory=PushConfig)
    federate: FederateConfig = field(default_factory=FederateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        if self.synth is not None and (self.input or self.labels):
            raise ConfigError("expected either `synth` (synthetic data) or `input` and `labels` (your DICOM), "
                              "found both")

    def on_input(self, input_path: str, labels: str) -> PipelineConfig:
        """This config on the DICOM at `input_path` (its `synth` section, if any, set aside)."""
        return dataclasses.replace(self, synth=None, input=input_path, labels=labels)


MAX_CONFIG_BYTES = 1 << 20  # a pipeline config is a page of text
MAX_CONFIG_VALUES = 100_000  # after YAML's aliases are expanded: a 1 kB "billion laughs" expands to 10^9


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for once every alias in it is expanded (each shared
    node counted once per use, computed once)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    sizes[id(node)] = size
    return size


def _load_yaml(text: str, path: Path) -> Any:
    """yaml.safe_load, refusing a document whose aliases expand past MAX_CONFIG_VALUES
    values before anything is built from it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_CONFIG_VALUES:
            raise ConfigError(f"{path}: expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases); expected "
                              "a pipeline config")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _read(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; expected a config of at most "
                              f"{MAX_CONFIG_BYTES:,}")
        data = _load_yaml(path.read_text(encoding="utf-8"), path) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; expected a YAML config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: expected UTF-8 text, found a byte that is not (at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply; expected a pipeline config (sections of keys)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def overlay(base: Mapping[str, Any], top: Mapping[str, Any], cls: type = PipelineConfig) -> dict[str, Any]:
    """`top` over `base`: sections merge key by key, any other value (a list, a mapping
    such as preprocess.windows) is replaced whole. A `top` naming `input` or `labels`
    sets aside a `synth` section of `base`: the two are alternatives."""
    hints = typing.get_type_hints(cls)
    merged = dict(base)
    if cls is PipelineConfig and ("input" in top or "labels" in top) and "synth" not in top:
        merged.pop("synth", None)
    for key, value in top.items():
        section = section_of(hints.get(key))
        if section and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = overlay(merged[key], value, section)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """The shipped config with the YAML file at `path` over it (it sets only the keys it
    names), then `overrides` (a mapping laid over it the same way, e.g. from command-line
    options); relative paths resolve against the file's folder (the shipped config holds
    none)."""
    path = Path(path) if path else DEFAULT_CONFIG
    data = _read(DEFAULT_CONFIG)
    if path.resolve() != DEFAULT_CONFIG.resolve():
        data = overlay(data, _read(path))
    data = overlay(data, overrides or {})
    try:
        config: PipelineConfig = from_dict(PipelineConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    base = path.resolve().parent
    resolve = lambda p: str((base / p).resolve()) if p and not remote(p) else p
    return dataclasses.replace(
        config, input=resolve(config.input), labels=resolve(config.labels),
        ingest=dataclasses.replace(config.ingest, hash_key_file=resolve(config.ingest.hash_key_file),
                                   dicomweb=dataclasses.replace(
                                       config.ingest.dicomweb, studies_csv=resolve(config.ingest.dicomweb.studies_csv),
                                       cache_dir=resolve(config.ingest.dicomweb.cache_dir))),
        validate=dataclasses.replace(config.validate, schema=resolve(config.validate.schema)),
        evaluate=dataclasses.replace(config.evaluate, eval_config=resolve(config.evaluate.eval_config)),
        train=dataclasses.replace(config.train, encoder_weights=resolve(config.train.encoder_weights)))


def config_from_text(text: str) -> PipelineConfig:
    """A whole config passed as text (JSON, as `to_dict` dumps it, or YAML), laid over the
    shipped config as a --config file is: a KFP pipeline's or a federation's parameter."""
    import json
    import tempfile

    try:
        data = json.loads(text)
    except ValueError:
        data = yaml.safe_load(text)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(data))  # YAML's own floats: it reads JSON's 1e-05 as text
        return load_config(path)
