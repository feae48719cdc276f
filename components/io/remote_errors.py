"""Failures of an object store (S3 through Beam's filesystems) as one line for people."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from ...pipeline.console import BeamJobMessages
from ...pipeline.errors import InputError, MedseqError, RunnerFailed
from . import storage
from .beam import options


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [c for c in (current.__cause__, current.__context__) if c is not None]
        stack += [c for c in getattr(current, "exception_details", {}).values() if isinstance(c, BaseException)]


@contextlib.contextmanager
def on_filesystems(beam_args: Sequence[str], *paths: str) -> Iterator[None]:
    """What a stage's own process does with `paths` (local, or on a filesystem of Beam's):
    an unreachable S3 endpoint stops first in one line, Beam's filesystems are
    configured by `beam_args` for the block, and an object store's refusal is one line."""
    check_endpoint(beam_args, paths)
    BeamJobMessages.last_error = ""
    with storage.filesystem_options(beam_args, *paths), remote_errors():
        yield


@contextlib.contextmanager
def remote_errors() -> Iterator[None]:
    """What an object store answered, in one line: an unreachable endpoint, refused
    credentials, a missing bucket."""
    try:
        yield
    except MedseqError:
        raise  # already a line for people
    except Exception as exc:
        line = describe(exc)
        if line is not None:
            raise InputError(line) from None
        runner = describe_runner(exc)
        if runner is None:
            raise
        raise RunnerFailed(runner) from None


def describe(exc: BaseException) -> str | None:
    """One line for an object-store failure anywhere in `exc`'s causes; None for others."""
    for cause in _causes(exc):
        name = type(cause).__name__
        text = str(cause)
        if name in ("EndpointConnectionError", "ConnectTimeoutError") or "Could not connect to the endpoint" in text:
            return ("cannot reach the object store's endpoint (expected a running S3 service at "
                    "--s3_endpoint_url, or AWS's default endpoint without it)")
        if any(code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden")):
            return ("the object store refused the credentials (expected --s3_access_key_id and "
                    "--s3_secret_access_key, or AWS's usual variables, of an account that may read and write there)")
        if "NoSuchBucket" in text:
            return "the bucket does not exist in the object store (expected an existing bucket in the s3:// path)"
    return None


JOB_FAILED = re.compile(r"Pipeline \S+ failed in state (\w+)")
WORKER_LOST = ("Channel closed prematurely", "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "Socket closed")


def describe_runner(exc: BaseException) -> str | None:
    """One line for a Beam job that its runner failed or lost (a portable job service's
    FAILED state, a worker gone mid-bundle); None for other errors (a bug keeps its
    traceback)."""
    for cause in _causes(exc):
        text = str(cause)
        state = JOB_FAILED.search(text)
        if state or any(mark in text for mark in WORKER_LOST):
            detail = BeamJobMessages.last_error or text.splitlines()[0][:300]
            where = f"the job ended {state.group(1)}" if state else "a worker stopped answering"
            return (f"the Beam job failed on its runner ({where}; last error: {detail}): a worker may have been "
                    "killed or the runner stopped. The output keeps what it held before, with no partial result: "
                    "run it again (the runner's logs, or --verbose, have the details)")
    return None


def check_endpoint(beam_args: Sequence[str], paths: Sequence[str]) -> None:
    """An S3 endpoint (--s3_endpoint_url) that refuses connections fails here in one line,
    before Beam's S3 client retries it for minutes."""
    if not any(p.startswith("s3://") for p in paths):
        return
    from apache_beam.options.pipeline_options import S3Options

    url = options(beam_args).view_as(S3Options).s3_endpoint_url
    if not url:
        return  # AWS's own endpoints
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=10).close()
    except OSError:
        raise InputError(f"cannot reach the object store's endpoint {parts.scheme}://{parts.hostname}:{port} "
                         "(expected a running S3 service at --s3_endpoint_url)") from None
