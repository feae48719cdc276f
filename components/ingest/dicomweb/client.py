"""One DICOMweb service: its URL checks, credentials, and requests that are retried.

Credentials never come from a config: `$MEDSEQ_DICOMWEB_TOKEN` (a bearer token) or
`$MEDSEQ_DICOMWEB_USER` and `$MEDSEQ_DICOMWEB_PASSWORD` (HTTP basic), each also as
`*_FILE` naming a file that holds it. Nothing here logs a URL's query, a header or a
response body: a QIDO-RS response carries names, IDs and dates.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3

from ....pipeline.config import DicomwebConfig
from ....pipeline.errors import ArchiveError, ConfigError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # and any other 5xx
TOKEN_ENV, USER_ENV, PASSWORD_ENV = "MEDSEQ_DICOMWEB_TOKEN", "MEDSEQ_DICOMWEB_USER", "MEDSEQ_DICOMWEB_PASSWORD"
JSON = "application/dicom+json"
# WADO-RS of the archive's own bytes: without transfer-syntax=* a server may transcode.
DICOM_PARTS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# Left unencoded in QIDO-RS values: wildcards, UID lists, date ranges. Orthanc 1.10 does
# not decode a percent-encoded value, so "CARDIAC%2A" would match nothing there.
QUERY_SAFE = "*?,-._~^:"


def is_dicomweb(path: str) -> bool:
    """An input that names a DICOMweb service root rather than files."""
    return path.startswith(("http://", "https://"))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_root(url: str, allow_http: bool = False) -> str:
    """The service root without a trailing slash; plain http only to a loopback host
    unless `allow_http` (credentials and patient data would cross the network in clear)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"input: expected a DICOMweb service root such as https://host/dicom-web, found {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("input: expected a DICOMweb service root without a query, fragment or credentials "
                          f"(credentials come from ${TOKEN_ENV} or ${USER_ENV}/${PASSWORD_ENV}), found {url!r}")
    if parts.scheme == "http" and not (allow_http or _loopback(parts.hostname)):
        raise ConfigError(f"input: plain http:// to {parts.hostname}, which is not a loopback address; expected "
                          "https://, or ingest.dicomweb.allow_http: true on a network you trust")
    return url.rstrip("/")


def _secret(name: str) -> str | None:
    """$NAME, else the contents of the file $NAME_FILE names, else None."""
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        raise ConfigError(f"${name}_FILE: cannot read the file it names") from None


def credentials() -> dict[str, Any]:
    """requests' `auth`/`headers` for the service, from the environment only."""
    token = _secret(TOKEN_ENV)
    if token:
        return {"headers": {"Authorization": f"Bearer {token}"}}
    user = _secret(USER_ENV)
    if user:
        password = _secret(PASSWORD_ENV)
        if password is None:
            raise ConfigError(f"${USER_ENV} is set but ${PASSWORD_ENV} (or ${PASSWORD_ENV}_FILE) is not")
        return {"auth": (user, password)}
    return {}


class Retryable(Exception):
    """A try that failed in a way another try may not: a lost connection, a timeout, or
    one of RETRY_STATUS; `wait` is the server's Retry-After in seconds, if it sent one;
    `unreachable`: no connection could be made at all (after every retry, the service is
    gone, not one series broken); `malformed`: the answer arrived whole but broken (a
    multipart body without its closing boundary): tried again, as a server killed mid-body
    can look the same, and a series that keeps being so is a lasting failure."""

    def __init__(self, what: str, status: int | None = None, wait: float | None = None,
                 unreachable: bool = False, malformed: bool = False) -> None:
        super().__init__(what)
        self.what, self.status, self.wait = what, status, wait
        self.unreachable, self.malformed = unreachable, malformed


class Failed(Exception):
    """One series cannot be fetched, and trying again now would not help: a malformed
    multipart body, an instance past ingest.dicomweb.max_instance_mb, a series past its
    time. `lasting`: the same series would fail the same way on a rerun (its body, not
    the moment), so a rerun skips it until the archive's copy changes."""

    def __init__(self, what: str, lasting: bool = False) -> None:
        super().__init__(what)
        self.what, self.lasting = what, lasting


def read_chunks(response: requests.Response, chunk: int, deadline: float | None = None,
                what: str = "the response") -> Iterator[bytes]:
    """The body as it arrives, each piece as soon as the socket has it (urllib3's read1,
    not a read that waits for a whole chunk: a server that drips a byte at a time still
    meets `deadline`, a time.monotonic() value). A connection lost or stalled mid-body is
    Retryable; the deadline passed is Failed."""
    raw = response.raw
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise Failed(f"{what} was still arriving at its deadline")
        try:
            data = raw.read1(chunk)
        except (urllib3.exceptions.ReadTimeoutError, requests.exceptions.Timeout):
            raise Retryable("timed out mid-response") from None
        except (urllib3.exceptions.HTTPError, OSError):
            raise Retryable("connection lost mid-response") from None
        if not data:
            return
        yield data


def read_capped(response: requests.Response, limit: int, what: str, deadline: float | None = None) -> bytes:
    """The whole body, if it holds at most `limit` bytes; ArchiveError past it (before
    more than that is held)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(what, limit)
    body = bytearray()
    for data in read_chunks(response, 1 << 16, deadline, what):
        body += data
        if len(body) > limit:
            raise _too_large(what, limit)
    return bytes(body)


def _too_large(what: str, limit: int) -> ArchiveError:
    return ArchiveError(f"{what}: the service answered more than {limit / 2**20:g} MB "
                        "(ingest.dicomweb.max_response_mb); expected a smaller page: lower ingest.dicomweb.page_size")


class NotFound(Exception):
    """A 404 or 410: what was asked for is no longer in the archive."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def retry_after(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) in seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass
class Service:
    """Requests to one DICOMweb service root, each tried again on what RETRY_STATUS and
    lost connections name: exponential backoff with full jitter, at least Retry-After."""

    root: str
    config: DicomwebConfig = field(default_factory=DicomwebConfig)
    seed: int | None = None  # the jitter's; None: fresh

    def __post_init__(self) -> None:
        self.root = service_root(self.root, self.config.allow_http)
        self._auth = credentials()
        self._local = threading.local()
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self.retried = 0  # tries that failed and were made again, for the run's summary

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:  # one per thread: requests' Session is not thread-safe
            session = self._local.session = requests.Session()
            session.headers.update({"Accept-Encoding": "identity", "User-Agent": "medseq"})
            session.headers.update(self._auth.get("headers", {}))
            session.auth = self._auth.get("auth")
            session.trust_env = False  # no proxy or .netrc from the environment: credentials only as documented
        return session

    @contextmanager
    def get(self, path: str, params: Mapping[str, str] | None = None, accept: str = JSON) -> Iterator[Any]:
        """One GET of `root/path`, streamed; the response is closed after the block.
        Raises Retryable, NotFound, or ArchiveError (401/403, or any other error status)."""
        query = "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe=QUERY_SAFE)}" for k, v in params.items()) \
            if params else ""
        try:
            response = self._session().get(
                f"{self.root}/{path}{query}", headers={"Accept": accept}, stream=True,
                timeout=(self.config.connect_timeout_s, self.config.read_timeout_s), allow_redirects=False)
        except requests.Timeout:
            raise Retryable("timed out") from None
        except requests.ConnectionError:
            raise Retryable("connection failed", unreachable=True) from None
        with response:
            _check(response)
            yield response

    def with_retries(self, what: str, call: Any, deadline: float | None = None) -> Any:
        """`call()` until it succeeds or `config.retries` more tries have failed; no try
        starts (and no wait runs) past `deadline` (a time.monotonic() value): Failed."""
        for attempt in range(self.config.retries + 1):
            try:
                return call()
            except Retryable as exc:
                status = f" (HTTP {exc.status})" if exc.status else ""
                if attempt == self.config.retries:
                    raise Retryable(f"{what}: {exc.what}{status} after {attempt + 1} tries", exc.status,
                                    unreachable=exc.unreachable, malformed=exc.malformed) from None
                wait = self.backoff(attempt, exc.wait)
                if deadline is not None and time.monotonic() + wait > deadline:
                    raise Failed(f"{what}: {exc.what}{status}, and no time was left for another try") from None
                with self._lock:
                    self.retried += 1
                self._local.retried = self.retried_here() + 1
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def retried_here(self) -> int:
        """The tries this thread made again (a series' fetch is one thread's work)."""
        return int(getattr(self._local, "retried", 0))

    def backoff(self, attempt: int, server_wait: float | None) -> float:
        """Full jitter over the doubled wait, capped; never shorter than the server asked."""
        ceiling = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** attempt)
        wait = self._random.uniform(0, ceiling)
        return min(self.config.max_backoff_s, max(wait, server_wait or 0.0))

    def search(self, path: str, params: Mapping[str, str], deadline: float | None = None) -> list[dict[str, Any]]:
        """Every result of a QIDO-RS search, page by page (`config.page_size` a request),
        each answer read into at most `config.max_response_mb`. Paging ends on a short
        page, or on a page that adds no result not seen before (a service that ignores
        `offset` answers the first page again and again)."""
        results: list[dict[str, Any]] = []
        seen: set[str] = set()
        # Named by what it searches for, never by its path: the path holds study and series UIDs.
        what = f"QIDO-RS search for {path.rsplit('/', 1)[-1]}"
        limit = int(self.config.max_response_mb * 2**20)
        while True:
            page_params = {**params, "limit": str(self.config.page_size), "offset": str(len(results))}

            def page(p: Mapping[str, str] = page_params) -> list[dict[str, Any]]:
                with self.get(path, p) as response:
                    if response.status_code == 204:
                        return []
                    body = read_capped(response, limit, what, deadline)
                try:
                    items = json.loads(body) if body.strip() else []
                except (ValueError, RecursionError):
                    raise Retryable("an incomplete or malformed QIDO-RS response") from None
                if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
                    found = type(items).__name__ if not isinstance(items, list) else "an array holding " + next(
                        type(i).__name__ for i in items if not isinstance(i, dict))
                    raise ArchiveError(f"{what}: expected a JSON array of DICOM JSON objects, found {found}")
                return items

            found = self.with_retries(what, page, deadline)
            new = [item for item in found if _canonical(item) not in seen]
            seen.update(_canonical(item) for item in new)
            results.extend(new)
            if len(found) < self.config.page_size or not new:
                return results


def _canonical(item: Mapping[str, Any]) -> str:
    return json.dumps(item, sort_keys=True, separators=(",", ":"))


def _check(response: requests.Response) -> None:
    status = response.status_code
    if status < 300:
        return
    if status in (401, 403):
        raise ArchiveError(f"the DICOMweb service refused the credentials (HTTP {status}); set "
                           f"${TOKEN_ENV}, or ${USER_ENV} and ${PASSWORD_ENV}, to an account that may read it")
    if status in (404, 410):
        raise NotFound(status)
    if status in RETRY_STATUS or status >= 500:
        raise Retryable("the service answered an error", status, retry_after(response.headers.get("Retry-After")))
    raise ArchiveError(f"the DICOMweb service answered HTTP {status} to a request it should serve; expected "
                       "a DICOMweb (QIDO-RS, WADO-RS) service root as --input")


def value(item: Mapping[str, Any], tag: str) -> str:
    """The first value of `tag` (8 hex digits) in a DICOM JSON object, as a string ("" for
    an element that is absent or not shaped as DICOM JSON says)."""
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or not values:
        return ""
    first = values[0]
    if isinstance(first, dict):
        return str(first.get("Alphabetic", ""))
    return str(first) if isinstance(first, (str, int, float)) and not isinstance(first, bool) else ""
