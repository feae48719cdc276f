"""QIDO-RS: the series a DICOMweb input names, and the instances of each.

Only UIDs and counts are kept of a response; names, IDs and dates in it are dropped
where they are parsed and never logged.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from ....pipeline.config import DicomwebConfig
from ....pipeline.errors import InputError
from .client import Service, value

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
SERIES_INSTANCES = "00201209"  # Number of Series Related Instances
STUDY_KEYS = {"study_instance_uid": "StudyInstanceUID", "accession_number": "AccessionNumber"}


@dataclass(frozen=True, order=True)
class SeriesRef:
    """A series as QIDO-RS lists it (identifiers out of repr)."""

    study_uid: str = field(repr=False)
    series_uid: str = field(repr=False)
    instances: int = 0  # Number of Series Related Instances, 0 when the service does not say


def study_queries(config: DicomwebConfig) -> list[dict[str, str]]:
    """The QIDO-RS study searches of `config`: one, or one per row of `studies_csv`."""
    base = {k: str(v) for k, v in config.filters.items()}
    if config.study_date:
        base["StudyDate"] = config.study_date
    if config.modality:
        base["ModalitiesInStudy"] = config.modality
    if config.studies_csv is None:
        return [base]
    return [{**base, attribute: row} for attribute, row in _study_rows(config.studies_csv)]


def _study_rows(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            reader = csv.DictReader(io.StringIO(f.read()))
    except (OSError, UnicodeDecodeError):
        raise InputError(f"ingest.dicomweb.studies_csv: cannot read {path} as UTF-8 CSV") from None
    columns = [c.strip() for c in reader.fieldnames or []]
    column = next((c for c in STUDY_KEYS if c in columns), None)
    if column is None:
        raise InputError(f"{path}: expected a CSV header with a column {' or '.join(STUDY_KEYS)}, "
                         f"found {','.join(columns)!r}")
    rows = []
    for row in reader:
        found = {(k or "").strip(): (v or "").strip() for k, v in row.items()}.get(column, "")
        if found:
            rows.append((STUDY_KEYS[column], found))
    if not rows:
        raise InputError(f"{path}: no {column} values; expected one study per row")
    return rows


def find_series(service: Service, config: DicomwebConfig, deadline: float | None = None) -> list[SeriesRef]:
    """Every series of every study the filters match, sorted, each once; searched before
    `deadline` (a time.monotonic() value), else client.Failed."""
    studies: set[str] = set()
    for query in study_queries(config):
        studies.update(value(item, STUDY_UID) for item in service.search("studies", query, deadline))
    studies.discard("")
    found: set[SeriesRef] = set()
    series_query = {"includefield": SERIES_INSTANCES}
    if config.modality:
        series_query["Modality"] = config.modality
    for study in sorted(studies):
        for item in service.search(f"studies/{study}/series", series_query, deadline):
            uid = value(item, SERIES_UID)
            if uid:
                count = value(item, SERIES_INSTANCES)
                found.add(SeriesRef(study, uid, int(count) if count.isdigit() else 0))
    return sorted(found)


def instance_uids(service: Service, ref: SeriesRef, deadline: float | None = None) -> list[str]:
    """The SOP Instance UIDs of a series, sorted."""
    items = service.search(f"studies/{ref.study_uid}/series/{ref.series_uid}/instances",
                           {"includefield": SOP_UID}, deadline)
    return sorted({value(item, SOP_UID) for item in items} - {""})
