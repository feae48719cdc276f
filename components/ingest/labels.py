"""labels.csv: what each series should be answered, by one key column.

A row keys its label by the first of LABEL_KEYS the header has (labels per series, or
per study as a radiology information system gives them). For `train.target: class` the
answer is the `label` column, a class name; for `train.target: value` it is the number
in the column `train.value.column` (e.g. `ef`). A row whose number is not a finite
number, or lies outside `train.value.range`, does not stop the job: its series is
rejected by name (`bad_value`, `value_out_of_range`) and the rest converts. Two rows
giving one key two answers are one line of error, which names line numbers, never the
key (it identifies a patient's series).
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
CLASS, VALUE = "class", "value"


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


def read_labels(path: str, target: str = CLASS, value: ValueConfig | None = None) -> LabelTable:
    """labels.csv -> its labels by the key column it has (the first of LABEL_KEYS)."""
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
