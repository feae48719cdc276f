"""labels.csv: what each series should be answered, by one key column.

A row keys its label by the first of LABEL_KEYS the header has (labels per series, or
per study as a radiology information system gives them). For `train.target: class` the
answer is the `label` column, a class name; for `train.target: value` it is the number
in the column `train.value.column` (e.g. `ef`). A row whose number is not a finite
number, or lies outside `train.value.range`, does not stop the job: its series is
rejected by name (`bad_value`, `value_out_of_range`) and the rest converts. Two rows
giving one key two answers are one line of error, which names line numbers, never the
key (it identifies a patient's series).

For `train.target: frames` the file is frame_labels.csv: a key column, the frame as
`frame` (its 0-based index in the ordered series, EchoNet's VolumeTracings numbering) or
`time_ms` (from the series' first frame), and `label`, the event's name (one of
`train.frames.events`). Sparse key frames are the rule: a row per labeled frame. Where
each lands among the output frames is decided per series (steps.py), where the frames
are known.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field

from ...pipeline.config import ValueConfig
from ...pipeline.errors import InputError
from ..io.remote_errors import describe
from ..io.storage import open_binary
from ..preprocessing import reasons

LABEL_KEYS = ("series_instance_uid", "study_instance_uid", "accession_number")
CLASS_NAME = re.compile(r"^[\w][\w .-]{0,63}$")  # class names travel into file names, configs and reports
CLASS, VALUE, FRAMES = "class", "value", "frames"
FRAME_UNITS = ("frame", "time_ms")  # frame_labels.csv: where a key frame is, by index or by time


@dataclass(frozen=True)
class LabelTable:
    labels: dict[str, str]  # key column's value -> class name, or the number as repr(float)
    classes: tuple[str, ...]  # sorted; () for a value target
    column: str  # one of LABEL_KEYS
    target: str = CLASS
    # key column's value -> (reason, detail): rows whose value the job rejects by name
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.labels) + len(self.bad)


def read_labels(path: str, target: str = CLASS, value: ValueConfig | None = None,
                events: tuple[str, ...] = ("ed", "es")) -> LabelTable:
    """labels.csv (frame_labels.csv for `frames`) -> its labels by the key column it has
    (the first of LABEL_KEYS)."""
    try:
        with open_binary(path) as f:
            raw = f.read()
    except OSError as exc:  # an object store's own reason first (remote_errors.describe)
        raise InputError(describe(exc) or f"labels file not found or not readable: {path}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: expected UTF-8 text, found a byte that is not (0x{raw[exc.start]:02x} at byte "
                         f"{exc.start}); save the labels as UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        if target == FRAMES:
            return _frame_rows(reader, path, tuple(events))
        return _label_rows(reader, path, target, value or ValueConfig())
    except csv.Error as exc:  # csv's own words name the problem, not the data ("field larger than field limit")
        raise InputError(f"{path}: line {reader.line_num + 1}: not valid CSV ({exc}); expected rows of a key column "
                         "and a label") from None


def _value_of(text: str, value: ValueConfig) -> tuple[str, tuple[str, str] | None]:
    """(the number as repr(float), None) or ("", (reason, detail))."""
    try:
        number = float(text)
    except ValueError:
        return "", (reasons.BAD_VALUE, f"its {value.column} in the labels file is not a number "
                                       f"({text[:24]!r}); expected a finite number")
    if not math.isfinite(number):
        return "", (reasons.BAD_VALUE, f"its {value.column} in the labels file is {text[:24]!r}; "
                                       "expected a finite number")
    if value.range is not None and not value.range[0] <= number <= value.range[1]:
        return "", (reasons.VALUE_OUT_OF_RANGE, f"its {value.column} {number:g} lies outside train.value.range "
                                                f"[{value.range[0]:g}, {value.range[1]:g}]")
    return repr(number), None


def _label_rows(reader: csv.DictReader[str], path: str, target: str, value: ValueConfig) -> LabelTable:
    columns = {c.strip() for c in reader.fieldnames or []}
    column = next((c for c in LABEL_KEYS if c in columns), None)
    answer = value.column if target == VALUE else "label"
    if column is None or answer not in columns:
        what = f"a column {answer} (train.value.column)" if target == VALUE else "a column label"
        raise InputError(f"{path}: expected a CSV header with {what} and one of {', '.join(LABEL_KEYS)}, "
                         f"found {','.join(reader.fieldnames or [])!r}")
    labels: dict[str, str] = {}
    bad: dict[str, tuple[str, str]] = {}
    first_line: dict[str, int] = {}
    answers: dict[str, str] = {}
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        uid, label = row.get(column, ""), row.get(answer, "")
        if not (uid and label):
            continue
        problem = None
        if target == VALUE:
            label, problem = _value_of(label, value)
            label = label or f"{row[answer][:24]!r}"  # a bad value: compared as written
        elif not CLASS_NAME.match(label):
            raise InputError(f"{path}: line {reader.line_num}: expected a class name of letters, digits, '_', '-', "
                             f"'.' or spaces, found {label[:40]!r}")
        if uid in answers and answers[uid] != label:  # the line numbers, never the UID: it identifies
            noun = {"series_instance_uid": "series", "study_instance_uid": "study"}.get(column, "accession number")
            raise InputError(f"{path}: lines {first_line[uid]} and {reader.line_num} give one {noun} two "
                             f"labels ({answers[uid]!r} and {label!r}); expected one label per {noun}")
        answers[uid] = label
        if problem is None:
            labels[uid] = label
        else:
            bad[uid] = problem
        first_line.setdefault(uid, reader.line_num)
    if not labels:
        raise InputError(f"{path}: no labeled rows (expected rows of {column},{answer}"
                         f"{' holding finite numbers' if target == VALUE else ''})")
    classes = tuple(sorted(set(labels.values()))) if target == CLASS else ()
    return LabelTable(labels, classes, column, target, bad)


@dataclass(frozen=True)
class KeyFrame:
    unit: str  # one of FRAME_UNITS
    at: float  # the frame index, or ms from the first frame
    event: str


def key_frames(encoded: str) -> list[KeyFrame]:
    """A LabelTable's frames label ("frame:12:ed;time_ms:400:es") -> its key frames."""
    out = []
    for part in encoded.split(";"):
        unit, at, event = part.split(":", 2)
        out.append(KeyFrame(unit, float(at), event))
    return out


def _frame_rows(reader: csv.DictReader[str], path: str, events: tuple[str, ...]) -> LabelTable:
    columns = {c.strip() for c in reader.fieldnames or []}
    column = next((c for c in LABEL_KEYS if c in columns), None)
    if column is None or "label" not in columns or not columns & set(FRAME_UNITS):
        raise InputError(f"{path}: expected a frame_labels.csv header with one of {', '.join(LABEL_KEYS)}, "
                         f"frame or time_ms, and label; found {','.join(reader.fieldnames or [])!r}")
    rows: dict[str, dict[tuple[str, float], str]] = {}
    bad: dict[str, tuple[str, str]] = {}
    first_line: dict[tuple[str, str, float], int] = {}
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        uid, event = row.get(column, ""), row.get("label", "")
        given = [(u, row[u]) for u in FRAME_UNITS if row.get(u)]
        if not (uid and event and given):
            continue
        if event not in events:
            raise InputError(f"{path}: line {reader.line_num}: expected an event of train.frames.events "
                             f"({', '.join(events)}), found {event[:40]!r}")
        unit, text = given[0]
        try:
            at = float(text)
        except ValueError:
            at = float("nan")
        if len(given) > 1 or not math.isfinite(at) or at < 0 or (unit == "frame" and at != int(at)):
            what = "both frame and time_ms" if len(given) > 1 else f"{unit} {text[:24]!r}"
            bad[uid] = (reasons.BAD_FRAME_LABEL, f"a row of its key frames in the frame labels file gives {what}; "
                        "expected a frame number (an integer >= 0) or a time in ms >= 0")
            continue
        where = (unit, at)
        known = rows.setdefault(uid, {})
        if known.get(where, event) != event:
            raise InputError(f"{path}: lines {first_line[(uid, unit, at)]} and {reader.line_num} give one {unit} "
                             f"{at:g} of a series two events ({known[where]!r} and {event!r}); expected one")
        known[where] = event
        first_line.setdefault((uid, unit, at), reader.line_num)
    labels = {uid: ";".join(f"{u}:{int(at) if u == 'frame' else repr(at)}:{e}" for (u, at), e in sorted(frames.items()))
              for uid, frames in rows.items() if uid not in bad}
    if not labels:
        raise InputError(f"{path}: no labeled rows (expected rows of {column},frame or time_ms,label with an "
                         f"event of {', '.join(events)})")
    return LabelTable(labels, tuple(events), column, FRAMES, bad)
