"""Fetching a DICOMweb input's series into a cache, incrementally, as a step of the
ingest graph (`FetchSeriesStep`, run by either executor like every other step).

Each series QIDO-RS lists is compared with the cache (a keyed digest of its SOP
Instance UIDs, kept beside each whole series): an unchanged series that is in the
cache is not fetched again; a new or changed one is fetched whole with WADO-RS (the
archive's bytes, `transfer-syntax=*`) into a staging folder and moved into the cache
only when every part arrived; its digest is written last, so a series counts as whole
only once its digest is there, and a job killed mid-fetch keeps what it fetched whole
for the rerun. The step then hands the files of each whole series to the graph's
header reads, so the fetch and the conversion are one job. The output's fetch manifest
(dicomweb/__init__.py) lists the series and digests the output was made from.

The cache is a folder on any filesystem `storage` reaches: a local one (renames are
atomic there: it never holds a partial series), or an object store that workers
without a shared disk all reach (`ingest.dicomweb.cache_dir: s3://bucket/cache`; a
folder there is its objects, moved one by one, and the digest marks a series whole).
It holds the archive's files as they are (identifiers included): it lives outside the
output folder, in `ingest.dicomweb.cache_dir`, one folder per output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import IO, Any

from ....pipeline.config import DicomwebConfig
from ....pipeline.errors import ArchiveError
from ...io import deid, storage
from ...preprocessing import reasons
from ..steps import REJECTED, Counts, RejectedRow, Tagged
from .client import DICOM_PARTS, Failed, NotFound, Retryable, Service, read_chunks
from .multipart import boundary_of, split_parts
from .search import SeriesRef, instance_uids

SERIES_DIR = "series"  # the cache folder's part that ingest reads
DIGESTS_DIR = "digests"  # one file per whole series in SERIES_DIR: its instances' digest
FAILED_DIR = "failed"  # one file per series whose copy in the archive is broken: its digest and why
STAGING_PREFIX = ".medseq-staging-fetch-"  # swept with the output lock's leftovers
CHUNK = 1 << 20
# Cache folder names: the series key in letters only, so that rejected.jsonl shows them
# as they are (a run of digits in a path is hashed again, as it may be an identifier).
_LETTERS = str.maketrans("0123456789", "ghijklmnop")
ARCHIVE_GONE = "archive_gone"  # an Outcome reason the driver turns back into ArchiveError
FETCHED = "fetched"  # FetchSeriesStep's tagged output: one Outcome JSON line per series


@dataclass(frozen=True)
class Outcome:
    """What became of one series: fetched, unchanged, kept from an earlier run's listing,
    or a dead letter (`reason`)."""

    series_key: str  # keyed hash of the Series Instance UID, as in the records
    folder: str  # its folder in the cache
    digest: str  # keyed digest of its SOP Instance UIDs; "" when unknown
    instances: int  # that QIDO-RS counted
    fetched: int = 0  # instances fetched by this run (0: unchanged, or failed)
    nbytes: int = 0
    reason: str = ""  # reasons.FETCH_FAILED or INCOMPLETE_FETCH
    message: str = ""
    retried: int = 0  # requests of this series tried again
    kept: bool = False  # from an earlier run's manifest, not in this run's listing

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Outcome:
        return cls(**json.loads(line))


def cache_folder(cache_dir: str, service_root: str, out: str) -> str:
    """The cache of one output fetching from one service (a local folder or an object
    store prefix)."""
    name = hashlib.sha256(f"{service_root}\n{out}".encode()).hexdigest()[:20]
    return storage.join(cache_dir, name) if storage.remote(cache_dir) else os.path.join(
        os.path.expanduser(cache_dir), name)


def series_folder(key: bytes, series_uid: str) -> tuple[str, str]:
    """(series key, cache folder name) of a series."""
    series_key = deid.keyed_hash(key, "series", series_uid)
    return series_key, series_key[:24].translate(_LETTERS)


def _read_text(path: str) -> str | None:
    try:
        with storage.open_binary(path) as f:
            return f.read().decode()
    except Exception:  # noqa: BLE001 - absent or unreadable, on any filesystem: not known
        return None


def _write_text(path: str, text: str) -> None:
    """A small file written whole: by rename locally, one PUT on an object store."""
    if storage.remote(path):
        with storage.create(path) as f:
            f.write(text.encode())
        return
    tmp = os.path.join(os.path.dirname(path), f"{STAGING_PREFIX}{os.path.basename(path)}")
    with storage.create(tmp) as f:
        f.write(text.encode())
    os.replace(tmp, path)


def _delete(*paths: str) -> None:
    for path in paths:
        try:
            if storage.exists(path):
                storage.delete([path])
        except Exception:  # noqa: BLE001 - gone already, or removed by another worker
            pass


class SeriesFetcher:
    """One series at a time: list its instances, compare, fetch it whole into the cache,
    within the series' time (`series_timeout_s`) and the fetch's (`deadline_at`, a
    time.time() value shared by every worker)."""

    def __init__(self, service: Service, key: bytes, cache: str | os.PathLike[str],
                 deadline_at: float | None = None) -> None:
        self.service, self.key, self.cache, self.deadline_at = service, key, os.fspath(cache), deadline_at
        self.stopped = threading.Event()  # set when the service is gone: no new series is started

    def _path(self, *parts: str) -> str:
        return storage.join(self.cache, *parts)

    def _deadline(self) -> float:
        """The series' deadline as a time.monotonic() value: its own time, or the fetch's end."""
        left = self.service.config.series_timeout_s
        if self.deadline_at is not None:
            left = min(left, self.deadline_at - time.time())
        return time.monotonic() + left

    def __call__(self, ref: SeriesRef) -> Outcome:
        before = self.service.retried_here()
        outcome = self._fetch(ref)
        retried = self.service.retried_here() - before
        return dataclasses.replace(outcome, retried=retried) if retried else outcome

    def _fetch(self, ref: SeriesRef) -> Outcome:
        series_key, folder = series_folder(self.key, ref.series_uid)
        target = self._path(SERIES_DIR, folder)
        if self.stopped.is_set():
            raise ArchiveError("the DICOMweb service stopped answering")
        if self.deadline_at is not None and time.time() >= self.deadline_at:  # the cache keeps what it holds
            return Outcome(series_key, folder, "", ref.instances, reason=reasons.FETCH_FAILED,
                           message="not fetched: the fetch reached ingest.dicomweb.deadline_s; a rerun fetches it")
        deadline = self._deadline()
        try:
            uids = self._fatal_if_gone(lambda: instance_uids(self.service, ref, deadline))
        except NotFound as exc:
            return self._failed(series_key, folder, "", ref.instances, f"QIDO-RS answered HTTP {exc.status}")
        except (Retryable, Failed) as exc:
            return self._failed(series_key, folder, "", ref.instances, str(exc))
        digest = deid.keyed_hash(self.key, "instances", "\n".join(uids))
        if self.whole(folder, digest):
            return Outcome(series_key, folder, digest, len(uids))
        known = self._lasting_failure(folder, digest)
        if known is not None:  # as broken as on an earlier run: not fetched again until the series changes
            return Outcome(series_key, folder, digest, len(uids), reason=reasons.FETCH_FAILED,
                           message=f"{known} (on an earlier run too; fetched again once the series changes)")
        staging = self._path(f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
        try:
            count, nbytes = self._fatal_if_gone(lambda: self._retrieve(ref, staging, deadline))
            if count < len(uids) or not count:
                return self._failed(series_key, folder, digest, len(uids), f"{count} of the {len(uids)} instances "
                                    "QIDO-RS counted arrived", reasons.INCOMPLETE_FETCH)
            _delete(self._path(DIGESTS_DIR, folder))  # not whole while it is replaced
            _replace(staging, target)
            _write_text(self._path(DIGESTS_DIR, folder), digest)
        except NotFound as exc:
            return self._failed(series_key, folder, digest, len(uids), f"WADO-RS answered HTTP {exc.status}")
        except Retryable as exc:
            if exc.malformed:  # every try met the same broken body
                self._record_lasting(folder, digest, str(exc))
            return self._failed(series_key, folder, digest, len(uids), str(exc))
        except Failed as exc:
            if exc.lasting:
                self._record_lasting(folder, digest, f"WADO-RS: {exc.what}")
            return self._failed(series_key, folder, digest, len(uids), f"WADO-RS: {exc.what}")
        finally:
            _delete(staging)
        return Outcome(series_key, folder, digest, len(uids), count, nbytes)

    def whole(self, folder: str, digest: str) -> bool:
        """The cache holds this very series (same instances) whole in `folder`."""
        return self.digest_of(folder) == digest and storage.exists(self._path(SERIES_DIR, folder))

    def files(self, folder: str) -> list[str]:
        """The files of a whole series in the cache, in name order."""
        return sorted(storage.match(storage.join(self._path(SERIES_DIR, folder), "**")))

    def _lasting_failure(self, folder: str, digest: str) -> str | None:
        """Why this very series (same instances) failed for good on an earlier run, if it did."""
        try:
            known = json.loads(_read_text(self._path(FAILED_DIR, folder)) or "null")
        except ValueError:
            return None
        return str(known["message"]) if isinstance(known, dict) and known.get("digest") == digest else None

    def _record_lasting(self, folder: str, digest: str, message: str) -> None:
        _write_text(self._path(FAILED_DIR, folder), json.dumps({"digest": digest, "message": message}))

    def digest_of(self, folder: str) -> str | None:
        """The digest of the series the cache holds in `folder`, if it is known whole."""
        return _read_text(self._path(DIGESTS_DIR, folder))

    def _fatal_if_gone(self, call: Any) -> Any:
        """A service that refuses connections after every retry is down, not one series
        broken: the job stops (what was fetched stays cached for the rerun)."""
        try:
            return call()
        except Retryable as exc:
            if exc.unreachable:
                self.stopped.set()
                raise ArchiveError(f"the DICOMweb service stopped answering ({exc.what}); the series fetched so "
                                   "far are cached: run the same command again when it is back") from None
            raise

    def _failed(self, series_key: str, folder: str, digest: str, instances: int, message: str,
                reason: str = reasons.FETCH_FAILED) -> Outcome:
        _delete(self._path(DIGESTS_DIR, folder), self._path(SERIES_DIR, folder))  # no stale copy is converted
        return Outcome(series_key, folder, digest, instances, reason=reason, message=message)

    def _retrieve(self, ref: SeriesRef, staging: str, deadline: float) -> tuple[int, int]:
        """The series' instances as files in `staging` (emptied first): (count, bytes)."""
        max_part = int(self.service.config.max_instance_mb * 2**20)
        written: list[int] = []

        def attempt() -> tuple[int, int]:
            _delete(staging)
            written.clear()
            path = f"studies/{ref.study_uid}/series/{ref.series_uid}"
            with self.service.get(path, accept=DICOM_PARTS) as response:
                boundary = boundary_of(response.headers.get("Content-Type", ""))
                count = split_parts(read_chunks(response, CHUNK, deadline, "the series"), boundary,
                                    lambda i: _Counted(storage.create(storage.join(staging, f"IM{i:06d}")), written),
                                    max_part)
            return count, sum(written)

        return self.service.with_retries("WADO-RS", attempt, deadline)  # type: ignore[no-any-return]


class _Counted:
    """A part's file (a DICOMDIR-style name, kept readable in rejected.jsonl) whose bytes
    are counted as they are written."""

    def __init__(self, f: IO[bytes], sizes: list[int]) -> None:
        self.f, self.sizes = f, sizes
        sizes.append(0)
        self.index = len(sizes) - 1

    def write(self, data: bytes) -> int:
        self.sizes[self.index] += len(data)
        return self.f.write(data)

    def close(self) -> None:
        self.f.close()


def _replace(staging: str, target: str) -> None:
    """`staging` becomes `target`: by renames locally (a reader sees the old series or
    the new), object by object on an object store (the digest, written after, marks it whole)."""
    old = f"{staging}-old"  # beside the staging folder: swept with it if a kill leaves it
    if not storage.remote(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
    if storage.exists(target):
        storage.rename(target, old)
    storage.rename(staging, target)
    _delete(old)


def fetch_in_process(fetcher: SeriesFetcher, refs: Iterable[SeriesRef], concurrency: int) -> list[Outcome]:
    """Every series through `concurrency` threads; the first fatal error stops the rest."""
    refs = list(refs)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="medseq-fetch") as pool:
        futures = [pool.submit(fetcher, ref) for ref in refs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            fetcher.stopped.set()
            for future in futures:
                future.cancel()
            raise failed.exception()  # type: ignore[misc]
    return [f.result() for f in futures]


class FetchSeriesStep:
    """(group, [series]) -> the files of each series the cache holds whole after it (the
    graph's header reads take them), `FETCHED` Outcome lines, and a `REJECTED` row per
    series that could not be fetched. A group's series are fetched by `threads` threads
    (the in-process executor: one group, ingest.dicomweb.concurrency threads; Beam: that
    many groups, one thread each, so no runner fetches more at once). A series is
    ("fetch", study, series, instances) from this run's listing, or ("keep", series
    key, folder, digest) from an earlier run's manifest that this listing left out."""

    REJECTED = REJECTED

    def __init__(self, root: str, config: DicomwebConfig, key: bytes, cache: str, deadline_at: float | None,
                 threads: int = 1) -> None:
        self.root, self.config, self.key, self.cache = root, config, key, cache
        self.deadline_at, self.threads = deadline_at, threads
        self._fetcher: SeriesFetcher | None = None
        self.counts = Counts()

    def start_bundle(self) -> None:
        if self._fetcher is None:  # credentials are read here, on the worker, never shipped in the step
            self._fetcher = SeriesFetcher(Service(self.root, self.config), self.key, self.cache, self.deadline_at)

    def finish_bundle(self) -> None:
        pass

    def process(self, element: tuple[int, Iterable[tuple[Any, ...]]]) -> Iterator[object]:
        fetcher = self._fetcher
        assert fetcher is not None, "start_bundle() sets the fetcher up"
        items = sorted(element[1])
        kept = [Outcome(key, folder, digest, 0, kept=True) for _, key, folder, digest in
                (i for i in items if i[0] == "keep")]
        refs = [SeriesRef(study, series, n) for _, study, series, n in (i for i in items if i[0] == "fetch")]
        try:
            outcomes = fetch_in_process(fetcher, refs, self.threads) if self.threads > 1 else [fetcher(r) for r in refs]
        except ArchiveError as exc:  # the job stops after this run (the driver raises it); Beam must not retry
            yield Tagged(FETCHED, Outcome("", "", "", 0, reason=ARCHIVE_GONE, message=str(exc)).to_json())
            return
        for outcome in [*outcomes, *kept]:
            if outcome.reason:
                self.counts.inc("series_fetch_failed")
                yield Tagged(REJECTED, RejectedRow(outcome.folder, outcome.series_key, outcome.reason,
                                                   outcome.message, outcome.instances))
                yield Tagged(FETCHED, outcome.to_json())
                continue
            # A listed series is whole here (fetched, or found unchanged); a kept one is checked.
            whole = not outcome.kept or fetcher.whole(outcome.folder, outcome.digest)
            files = fetcher.files(outcome.folder) if whole else []
            if not files:  # a kept series no longer whole in the cache: left out of this output
                continue
            self.counts.inc("series_kept" if outcome.kept else "series_fetched" if outcome.fetched else
                            "series_unchanged")
            yield Tagged(FETCHED, outcome.to_json())
            yield from files
