"""Names of the record contract (DESIGN.md). Import these; never spell a feature twice."""

from __future__ import annotations

FRAMES = "frames"
FRAMES_SHAPE = "frames_shape"
FRAMES_DTYPE = "frames_dtype"
VALID_FRAMES = "valid_frames"
LABEL = "label"
TARGET = "target"  # float: the number a series answers under train.target: value (instead of LABEL)
# train.target: frames. Per output frame: the phase score (1 at events[0], 0 at events[1],
# linear between) and its weight (1 inside the labeled span, 0 outside it and on padding);
# the source frame (its index in the ordered series) each output frame shows. Per labeled
# key frame: the output frame it landed on, its event (an index into qc.json's classes),
# its source frame number, and the source series' frame interval in ms (0: unknown).
FRAME_LABELS = "frame_labels"
FRAME_WEIGHTS = "frame_weights"
FRAME_SOURCES = "frame_sources"
KEY_FRAMES = "key_frames"
KEY_EVENTS = "key_events"
KEY_SOURCE_FRAMES = "key_source_frames"
SOURCE_INTERVAL_MS = "source_interval_ms"
FRAME_FEATURES = (FRAME_LABELS, FRAME_WEIGHTS, FRAME_SOURCES, KEY_FRAMES, KEY_EVENTS, KEY_SOURCE_FRAMES,
                  SOURCE_INTERVAL_MS)
SERIES_KEY = "series_key"
PATIENT_KEY = "patient_key"
MODALITY = "modality"
MANUFACTURER = "manufacturer"
SITE = "site"
SPACING = "spacing"
FRAME_AXIS = "frame_axis"
POSITION_INDEX = "position_index"  # only in the records of a 4-D series: its slice position

# Values of FRAME_AXIS: what consecutive frames step through. Training augments by
# it (a cine may start at any phase, a slice stack may not be rolled).
AXIS_TIME = "time"
AXIS_SPACE = "space"
AXIS_INDEX = "index"  # ordered by instance number only (no geometry, no timing)
AXES = (AXIS_TIME, AXIS_SPACE, AXIS_INDEX)

BYTES_FEATURES = (FRAMES, FRAMES_DTYPE, SERIES_KEY, PATIENT_KEY, MODALITY, MANUFACTURER, SITE, FRAME_AXIS)
INT_FEATURES = (FRAMES_SHAPE, VALID_FRAMES, LABEL)
FLOAT_FEATURES = (SPACING,)
ALL_FEATURES = BYTES_FEATURES + INT_FEATURES + FLOAT_FEATURES
# In some records only; readers that do not know them ignore them.
OPTIONAL_FEATURES = (POSITION_INDEX, TARGET, *FRAME_FEATURES)
CONTRACT_FEATURES = ALL_FEATURES + OPTIONAL_FEATURES

# Features TFMA slices on (DESIGN: per modality, vendor, site).
SLICE_FEATURES = (MODALITY, MANUFACTURER, SITE)

SPLITS = ("train", "eval", "test")

# Model signature names.
SERVING_SIGNATURE = "serving_default"
FRAMES_SIGNATURE = "predict_frames"
EXPLAIN_SIGNATURE = "explain_frames"  # predict_frames' outputs plus ATTRIBUTION (Grad-CAM)
# A causal model's (train.causal) one frame at a time: frame + state_* -> frame_value + state_*
# (components/model/step.py), and the zero state to start a stream with, for batch_size streams.
STEP_SIGNATURE = "predict_step"
INITIAL_STATE_SIGNATURE = "initial_state"
ATTRIBUTION = "attribution"
PROBABILITIES = "probabilities"
CLASS_IDS = "class_ids"
VALUE = "value"  # the output of a value head (train.target: value), in the labels' units
FRAME_VALUES = "frame_values"  # the output of a per-frame head (train.target: frames): (B, T) phase scores
ANOMALY_SCORE = "anomaly_score"  # the output of an anomaly model (train.target: anomaly): (B,), 0 where all is foreseen
DOMAIN_SCORE = "domain_score"  # how far a series' sequence embedding lies from the training records' (model/domain.py)

# Files every run folder uses.
QC_FILE = "qc.json"
REJECTED_FILE = "rejected.jsonl"
FETCH_MANIFEST_FILE = "fetch_manifest.json"  # a DICOMweb input: the series an ingest output was made from
STATS_FILE = "stats.json"
ANOMALIES_FILE = "anomalies.json"
BLESSED = "BLESSED"
NOT_BLESSED = "NOT_BLESSED"
