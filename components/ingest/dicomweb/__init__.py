"""A DICOMweb input (`--input https://host/dicom-web`): QIDO-RS search, WADO-RS retrieve.

`archive_source()` lists the series the filters of `ingest.dicomweb` match and gives the
ingest graph a `DicomwebSource`: the graph's first steps fetch the new and changed
series into the cache (fetch.FetchSeriesStep, on whichever executor runs the job, so on
a worker pool too, with the cache on an object store they all reach) and hand their
files to the header reads. The fetch manifest is written into the output when the job
is done. `client` holds the requests and their retries, `search` the QIDO-RS queries,
`multipart` the streamed WADO-RS response, `fetch` the cache and the step.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ....pipeline import features as F
from ....pipeline.config import DicomwebConfig
from ....pipeline.errors import ArchiveError, InputError
from ...io import storage
from ...io.output_lock import output_lock
from ..steps import REJECTED
from .client import Failed, NotFound, Retryable, Service, is_dicomweb
from .fetch import (
    ARCHIVE_GONE,
    DIGESTS_DIR,
    FETCHED,
    SERIES_DIR,
    FetchSeriesStep,
    Outcome,
    cache_folder,
    series_folder,
)
from .search import SeriesRef, find_series

if TYPE_CHECKING:
    from ..graph import Graph

__all__ = ["MANIFEST_FILE", "DicomwebSource", "archive_source", "is_dicomweb", "listed_series", "read_manifest"]

log = logging.getLogger("medseq.ingest")
MANIFEST_FILE = F.FETCH_MANIFEST_FILE
MANIFEST_SCHEMA = "medseq-dicomweb-fetch/1"


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


FETCHED_LINES = "_fetched"  # the job's side file of Outcome lines (merged away with the others)


@dataclass
class DicomwebSource:
    """The series of one listing (and those an earlier run's manifest names that it left
    out), fetched into `cache` by the graph's first steps: dealt into
    ingest.dicomweb.concurrency groups on Beam (a group's series one after another), one
    group of that many threads in this process."""

    service_root: str
    config: DicomwebConfig
    key: bytes = field(repr=False)
    cache: str
    items: list[tuple[Any, ...]] = field(repr=False)
    deadline_at: float
    old: dict[str, Any] = field(repr=False)
    started: float = field(default_factory=time.monotonic)
    searched_retries: int = 0
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

    @property
    def root(self) -> str:
        return storage.join(self.cache, SERIES_DIR)

    @property
    def instances(self) -> int:
        """The instances of the listed series and of those kept from earlier runs."""
        return sum(int(item[3]) if item[0] == "fetch" else int(self.old[item[1]].get("instances", 1))
                   for item in self.items)

    def check(self) -> None:
        """The listing found series already (archive_source)."""

    def paths(self, g: Graph, staging: str) -> tuple[Any, Any]:
        groups = self.config.concurrency if g.parallel else 1
        step = FetchSeriesStep(self.service_root, self.config, self.key, self.cache, self.deadline_at,
                               threads=1 if g.parallel else self.config.concurrency)
        dealt = g.group("DealSeries", g.create("ListedSeries", [(i % groups, item)
                                                                for i, item in enumerate(self.items)]))
        files, rejected, fetched = g.pardo("FetchSeries", dealt, step, (REJECTED, FETCHED))
        g.write_lines("WriteFetched", fetched, storage.join(staging, FETCHED_LINES))
        return g.spread("SpreadFiles", files), rejected

    def done(self, staging: str) -> None:
        """What the fetch steps did, read back; the archive gone is the job's ArchiveError."""
        lines = storage.read_lines(storage.join(staging, FETCHED_LINES))
        self.outcomes = sorted((Outcome.from_json(line) for line in lines), key=lambda o: o.series_key)
        gone = next((o for o in self.outcomes if o.reason == ARCHIVE_GONE), None)
        if gone is not None:
            raise ArchiveError(gone.message)

    @property
    def manifest(self) -> dict[str, Any]:
        return _manifest(self.old, self.outcomes)

    @property
    def summary(self) -> dict[str, Any]:
        listed = [o for o in self.outcomes if not o.kept]
        return _summary(listed, self.searched_retries + sum(o.retried for o in listed),
                        time.monotonic() - self.started)

    def prune(self) -> None:
        """Cache folders of no series in the manifest (a series whose fetch failed, an
        earlier key) are removed: the cache holds what the manifest lists."""
        keep = {v["folder"] for v in self.manifest["series"].values()}
        for part in (SERIES_DIR, DIGESTS_DIR):
            folder = storage.join(self.cache, part)
            names = _names_in(folder)
            storage.delete([storage.join(folder, n) for n in sorted(names - keep)])


def _names_in(folder: str) -> set[str]:
    """The names directly in a folder (on an object store: the first part below it of
    every object's name)."""
    if not storage.remote(folder):
        return set(os.listdir(folder)) if os.path.isdir(folder) else set()
    prefix = folder.rstrip("/") + "/"
    return {p[len(prefix):].split("/", 1)[0] for p in storage.match(prefix + "**")} - {""}


@contextmanager
def archive_source(url: str, config: DicomwebConfig, key: bytes, out: str) -> Iterator[DicomwebSource]:
    """The archive's series as the ingest graph's source; the cache stays locked while
    the job fetches and converts them."""
    started = time.monotonic()
    deadline_at = time.time() + config.deadline_s  # for every worker: a time of day
    service = Service(url, config)
    refs = listed_series(service, config, started + config.deadline_s)
    if not refs:
        raise InputError("the DICOMweb service lists no series that match ingest.dicomweb's filters; expected "
                         "at least one (check modality, study_date, filters and studies_csv)")
    cache = cache_folder(config.cache_dir or default_cache_dir(), service.root, out)
    with output_lock(cache):
        old = read_manifest(out).get("series", {})
        listed = {series_folder(key, r.series_uid)[0] for r in refs}
        items: list[tuple[Any, ...]] = [("fetch", r.study_uid, r.series_uid, r.instances) for r in refs]
        items += [("keep", k, v["folder"], v["digest"]) for k, v in old.items() if k not in listed]
        yield DicomwebSource(service.root, config, key, cache, items, deadline_at, old, started, service.retried)


def _manifest(old: dict[str, Any], outcomes: list[Outcome]) -> dict[str, Any]:
    """Every series fetched so far: those of earlier runs this listing left out too (while
    the cache still holds them whole)."""
    series = {}
    for o in outcomes:
        if not o.reason:
            series[o.series_key] = old[o.series_key] if o.kept else {
                "digest": o.digest, "instances": o.instances, "folder": o.folder}
    return {"schema": MANIFEST_SCHEMA, "series": dict(sorted(series.items()))}


def _summary(outcomes: list[Outcome], retried: int, seconds: float) -> dict[str, Any]:
    fetched = [o for o in outcomes if o.fetched and not o.reason]
    return {"listed": len(outcomes), "fetched": len(fetched),
            "unchanged": sum(1 for o in outcomes if not o.fetched and not o.reason),
            "failed": sum(1 for o in outcomes if o.reason), "instances": sum(o.fetched for o in fetched),
            "mb": sum(o.nbytes for o in fetched) / 1e6, "retried": retried, "seconds": round(seconds, 1)}
