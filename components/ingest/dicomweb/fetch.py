"""Fetching a DICOMweb input's series into a local cache, incrementally.

Each series QIDO-RS lists is compared with the cache (a keyed digest of its SOP
Instance UIDs, kept beside each whole series): an unchanged series that is in the
cache is not fetched again; a new or changed one is fetched whole with WADO-RS (the
archive's bytes, `transfer-syntax=*`) into a staging folder and renamed into the cache
only when every part arrived, so the cache never holds a partial series, and a job
killed mid-fetch keeps what it fetched whole for the rerun. The output's fetch manifest
(dicomweb/__init__.py) lists the series and digests the output was made from. The
cache then is an ordinary folder input: the ingest job converts it as it would any
folder, and the same instances give the same records.

The cache holds the archive's files as they are (identifiers included): it lives
outside the output folder, in `ingest.dicomweb.cache_dir`, one folder per output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from ....pipeline.errors import ArchiveError
from ...io import deid
from ...preprocessing import reasons
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
ARCHIVE_GONE = "archive_gone"  # an Outcome reason (Beam) the driver turns back into ArchiveError


@dataclass(frozen=True)
class Outcome:
    """What became of one series: fetched, unchanged, or a dead letter (`reason`)."""

    series_key: str  # keyed hash of the Series Instance UID, as in the records
    folder: str  # its folder in the cache
    digest: str  # keyed digest of its SOP Instance UIDs; "" when unknown
    instances: int  # that QIDO-RS counted
    fetched: int = 0  # instances fetched by this run (0: unchanged, or failed)
    nbytes: int = 0
    reason: str = ""  # reasons.FETCH_FAILED or INCOMPLETE_FETCH
    message: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Outcome:
        return cls(**json.loads(line))


def cache_folder(cache_dir: str, service_root: str, out: str) -> Path:
    """The cache of one output fetching from one service."""
    name = hashlib.sha256(f"{service_root}\n{out}".encode()).hexdigest()[:20]
    return Path(cache_dir).expanduser() / name


class SeriesFetcher:
    """One series at a time: list its instances, compare, fetch it whole into the cache,
    within the series' time (`series_timeout_s`) and the fetch's (`deadline_at`, a
    time.time() value shared by every worker)."""

    def __init__(self, service: Service, key: bytes, cache: Path, deadline_at: float | None = None) -> None:
        self.service, self.key, self.cache, self.deadline_at = service, key, cache, deadline_at
        self.stopped = threading.Event()  # set when the service is gone: no new series is started

    def _deadline(self) -> float:
        """The series' deadline as a time.monotonic() value: its own time, or the fetch's end."""
        left = self.service.config.series_timeout_s
        if self.deadline_at is not None:
            left = min(left, self.deadline_at - time.time())
        return time.monotonic() + left

    def __call__(self, ref: SeriesRef) -> Outcome:
        series_key = deid.keyed_hash(self.key, "series", ref.series_uid)
        folder = series_key[:24].translate(_LETTERS)
        target = self.cache / SERIES_DIR / folder
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
        if self.digest_of(folder) == digest and target.is_dir():
            return Outcome(series_key, folder, digest, len(uids))
        known = self._lasting_failure(folder, digest)
        if known is not None:  # as broken as on an earlier run: not fetched again until the series changes
            return Outcome(series_key, folder, digest, len(uids), reason=reasons.FETCH_FAILED,
                           message=f"{known} (on an earlier run too; fetched again once the series changes)")
        staging = self.cache / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            count, nbytes = self._fatal_if_gone(lambda: self._retrieve(ref, staging, deadline))
            if count < len(uids):
                return self._failed(series_key, folder, digest, len(uids), f"{count} of the {len(uids)} instances "
                                    "QIDO-RS counted arrived", reasons.INCOMPLETE_FETCH)
            _replace(staging, target)
            self._record(folder, digest)
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
            shutil.rmtree(staging, ignore_errors=True)
        return Outcome(series_key, folder, digest, len(uids), count, nbytes)

    def _lasting_failure(self, folder: str, digest: str) -> str | None:
        """Why this very series (same instances) failed for good on an earlier run, if it did."""
        try:
            known = json.loads((self.cache / FAILED_DIR / folder).read_text())
        except (OSError, ValueError):
            return None
        return str(known["message"]) if isinstance(known, dict) and known.get("digest") == digest else None

    def _record_lasting(self, folder: str, digest: str, message: str) -> None:
        failed = self.cache / FAILED_DIR
        failed.mkdir(parents=True, exist_ok=True)
        tmp = failed / f"{STAGING_PREFIX}{folder}"
        tmp.write_text(json.dumps({"digest": digest, "message": message}))
        tmp.replace(failed / folder)

    def digest_of(self, folder: str) -> str | None:
        """The digest of the series the cache holds in `folder`, if it is known whole."""
        try:
            return (self.cache / DIGESTS_DIR / folder).read_text()
        except OSError:
            return None

    def _record(self, folder: str, digest: str) -> None:
        """Marks a series whole in the cache, after its rename: a job killed at any point
        leaves each series either marked and whole, or unmarked (fetched again)."""
        digests = self.cache / DIGESTS_DIR
        digests.mkdir(parents=True, exist_ok=True)
        tmp = digests / f"{STAGING_PREFIX}{folder}"
        tmp.write_text(digest)
        tmp.replace(digests / folder)

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
        (self.cache / DIGESTS_DIR / folder).unlink(missing_ok=True)
        shutil.rmtree(self.cache / SERIES_DIR / folder, ignore_errors=True)  # no stale copy is converted
        return Outcome(series_key, folder, digest, instances, reason=reason, message=message)

    def _retrieve(self, ref: SeriesRef, staging: Path, deadline: float) -> tuple[int, int]:
        """The series' instances as files in `staging` (emptied first): (count, bytes)."""
        max_part = int(self.service.config.max_instance_mb * 2**20)

        def attempt() -> tuple[int, int]:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            path = f"studies/{ref.study_uid}/series/{ref.series_uid}"
            with self.service.get(path, accept=DICOM_PARTS) as response:
                boundary = boundary_of(response.headers.get("Content-Type", ""))
                count = split_parts(read_chunks(response, CHUNK, deadline, "the series"), boundary,
                                    lambda i: _part_file(staging, i), max_part)
            return count, sum(f.stat().st_size for f in staging.iterdir())

        return self.service.with_retries("WADO-RS", attempt, deadline)  # type: ignore[no-any-return]


def _part_file(folder: Path, index: int) -> IO[bytes]:
    return open(folder / f"IM{index:06d}", "wb")  # a DICOMDIR-style name: kept readable in rejected.jsonl


def _replace(staging: Path, target: Path) -> None:
    """`staging` becomes `target` by renames: a reader sees the old series or the new."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f"{STAGING_PREFIX}old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


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
