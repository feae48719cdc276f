"""The synthetic tasks and their classes (light: the CLI reads it for --help)."""

from __future__ import annotations

from ...pipeline.config import SYNTH_TASKS

TASKS = SYNTH_TASKS  # the config checks synth.task against the same names
CLASSES = {"cine_ef": ("normal", "reduced_ef"), "cine_ef3": ("normal", "mildly_reduced_ef", "reduced_ef"),
           "cine_phase": ("normal", "reduced_ef"),
           "cine_sax": ("normal", "reduced_ef"), "ct_nodule": ("clear", "nodule"),
           "dce_kinetics": ("benign", "malignant")}
# cine_sax: the volumetric ejection fraction over every slice (Simpson's method) decides;
# reduced_ef studies have a dysfunctional region on some slices only.
SAX_EF = {"reduced_ef": (0.15, 0.37), "normal": (0.45, 0.70)}
# Ejection fraction drawn per class, with gaps at the class borders (40 % for two
# classes; 40 and 50 % for three, after the HFrEF / HFmrEF / HFpEF ranges).
EF_RANGES = {
    "cine_ef": {"reduced_ef": (0.18, 0.37), "normal": (0.45, 0.70)},
    "cine_ef3": {"reduced_ef": (0.15, 0.37), "mildly_reduced_ef": (0.42, 0.48), "normal": (0.53, 0.70)},
}
# cine_ef with `--target value`: EF drawn uniformly over this range, every value possible.
VALUE_EF_RANGE = (0.15, 0.75)
# cine_phase: clips of several beats from any start phase, at any heart rate; only the
# end-diastolic (ed) and end-systolic (es) frames are labeled (frame_labels.csv).
PHASE_FRAMES = (24, 40)  # frames per clip
PHASE_CYCLES = (1.3, 2.4)  # heart beats per clip
PHASE_EF_RANGE = (0.30, 0.70)
PHASE_EVENTS = ("ed", "es")
