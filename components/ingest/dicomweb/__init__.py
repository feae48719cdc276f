"""A DICOMweb input (`--input https://host/dicom-web`): QIDO-RS search, WADO-RS retrieve.

`fetched()` lists the series the filters of `ingest.dicomweb` match, fetches the new
and changed ones into a local cache (fetch.py) and yields that cache as the folder the
ingest job converts; the fetch manifest is written into the output when the job is
done. `client` holds the requests and their retries, `search` the QIDO-RS queries,
`multipart` the streamed WADO-RS response, `transforms` the fetch as a Beam DoFn.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....pipeline import features as F
from ....pipeline.config import DicomwebConfig
from ....pipeline.errors import ArchiveError, InputError
from ...io import storage
from ...io.output_lock import output_lock
from ..steps import RejectedRow
from .client import Failed, NotFound, Retryable, Service, is_dicomweb
from .fetch import (
    ARCHIVE_GONE,
    DIGESTS_DIR,
    SERIES_DIR,
    Outcome,
    SeriesFetcher,
    cache_folder,
    fetch_in_process,
)
from .search import SeriesRef, find_series

__all__ = ["MANIFEST_FILE", "Fetched", "fetched", "is_dicomweb", "listed_series", "read_manifest"]

log = logging.getLogger("medseq.ingest")
MANIFEST_FILE = F.FETCH_MANIFEST_FILE
MANIFEST_SCHEMA = "medseq-dicomweb-fetch/1"


@dataclass(frozen=True)
class Fetched:
    """The cache folder ingest converts, the series that could not be fetched, and what
    the fetch did (counts, bytes, seconds: no identifier)."""

    root: str
    rejected: tuple[RejectedRow, ...]
    summary: dict[str, Any]
    manifest: dict[str, Any] = field(repr=False)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "medseq", "dicomweb")


def read_manifest(out: str) -> dict[str, Any]:
    """The manifest a run before wrote into `out` ({} for none)."""
    path = storage.join(out, MANIFEST_FILE)
    if not storage.exists(path):
        return {}
    with storage.open_binary(path) as f:
        try:
            manifest = json.loads(f.read())
        except ValueError:
            return {}
    return manifest if isinstance(manifest, dict) and manifest.get("schema") == MANIFEST_SCHEMA else {}


def write_manifest(out: str, manifest: dict[str, Any]) -> None:
    path = storage.join(out, MANIFEST_FILE)
    tmp = path + ".tmp"
    with storage.create(tmp) as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True).encode())
    if storage.exists(path):
        storage.delete([path])
    storage.rename(tmp, path)


def listed_series(service: Service, config: DicomwebConfig, deadline: float) -> list[SeriesRef]:
    """The series the service lists under `config`'s filters (QIDO-RS only), searched
    before `deadline` (time.monotonic()); a failed search is an ArchiveError in one line."""
    try:
        return find_series(service, config, deadline)
    except Retryable as exc:
        raise ArchiveError(f"the DICOMweb service could not be searched ({exc})") from None
    except Failed as exc:
        raise ArchiveError(f"the DICOMweb service could not be searched within ingest.dicomweb.deadline_s "
                           f"({exc})") from None
    except NotFound as exc:
        raise ArchiveError(f"no QIDO-RS search at {service.root} (HTTP {exc.status}); expected a DICOMweb "
                           "service root such as https://host/dicom-web") from None


@contextmanager
def fetched(url: str, config: DicomwebConfig, key: bytes, out: str, beam_args: list[str] | None,
            small_files: int) -> Iterator[Fetched]:
    """The input fetched; the cache stays locked while the block converts it. `beam_args`
    None: fetch in this process unless the series hold `small_files` instances or more."""
    started = time.monotonic()
    deadline_at = time.time() + config.deadline_s  # for every worker: a time of day
    service = Service(url, config)
    refs = listed_series(service, config, started + config.deadline_s)
    if not refs:
        raise InputError("the DICOMweb service lists no series that match ingest.dicomweb's filters; expected "
                         "at least one (check modality, study_date, filters and studies_csv)")
    cache = cache_folder(config.cache_dir or default_cache_dir(), service.root, out)
    with output_lock(str(cache)):
        old = read_manifest(out).get("series", {})
        fetcher = SeriesFetcher(service, key, cache, deadline_at)
        if beam_args is None and sum(r.instances for r in refs) < small_files:
            outcomes = fetch_in_process(fetcher, refs, config.concurrency)
        else:
            from .transforms import fetch_on_beam  # Beam only for a large archive or a Beam option

            outcomes = fetch_on_beam(service.root, config, key, cache, refs, list(beam_args or ()), deadline_at)
        gone = next((o for o in outcomes if o.reason == ARCHIVE_GONE), None)
        if gone is not None:
            raise ArchiveError(gone.message)
        manifest = _manifest(old, outcomes)
        keep = {v["folder"] for v in manifest["series"].values()}
        _prune(cache / SERIES_DIR, keep)
        _prune(cache / DIGESTS_DIR, keep)
        (cache / SERIES_DIR).mkdir(parents=True, exist_ok=True)
        summary = _summary(outcomes, service.retried, time.monotonic() - started)
        log.info("dicomweb: %(listed)d series listed, %(fetched)d fetched (%(instances)d instances, %(mb).1f MB), "
                 "%(unchanged)d unchanged, %(failed)d failed", summary)
        rejected = tuple(RejectedRow(o.folder, o.series_key, o.reason, o.message, o.instances)
                         for o in outcomes if o.reason)
        yield Fetched(str(cache / SERIES_DIR), rejected, summary, manifest)


def _manifest(old: dict[str, Any], outcomes: list[Outcome]) -> dict[str, Any]:
    """Every series fetched so far: those of earlier runs this listing left out too."""
    series = {k: v for k, v in old.items() if k not in {o.series_key for o in outcomes}}
    for o in outcomes:
        if not o.reason:
            series[o.series_key] = {"digest": o.digest, "instances": o.instances, "folder": o.folder}
    return {"schema": MANIFEST_SCHEMA, "series": dict(sorted(series.items()))}


def _prune(series_dir: Path, keep: set[str]) -> None:
    """Cache folders of no series in the manifest (a series whose fetch failed, an earlier
    key) are removed: the cache converts to exactly what the manifest lists."""
    if series_dir.is_dir():
        for path in series_dir.iterdir():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()


def _summary(outcomes: list[Outcome], retried: int, seconds: float) -> dict[str, Any]:
    fetched = [o for o in outcomes if o.fetched and not o.reason]
    return {"listed": len(outcomes), "fetched": len(fetched),
            "unchanged": sum(1 for o in outcomes if not o.fetched and not o.reason),
            "failed": sum(1 for o in outcomes if o.reason), "instances": sum(o.fetched for o in fetched),
            "mb": sum(o.nbytes for o in fetched) / 1e6, "retried": retried, "seconds": round(seconds, 1)}
