"""De-identification: keyed hashes (HMAC-SHA256) instead of identifiers.

No header value leaves ingest except through `keyed_hash`. The key comes from
MEDSEQ_HASH_KEY or a key file; without one, ingest refuses to run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ...pipeline.errors import HashKeyError

if TYPE_CHECKING:
    from ..preprocessing.headers import FileHeader

KEY_ENV = "MEDSEQ_HASH_KEY"
MIN_KEY_BYTES = 16
# Path parts that may carry an identifier: UIDs, and any run of 5+ digits (MRNs, accession
# numbers, dates). DICOMDIR-style counters (PA000001/ST000001/SE000001/IM000001) are kept.
_UID_LIKE = re.compile(r"\d+(\.\d+){2,}")
_DIGIT_RUN = re.compile(r"\d{5,}")
_DICOMDIR_NAME = re.compile(r"^(PA|PT|ST|SE|IM|I)\d{1,8}$", re.IGNORECASE)


def load_key(key_file: str | None = None) -> bytes:
    """The secret key: the key file if given, else $MEDSEQ_HASH_KEY."""
    if key_file:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError:
            raise HashKeyError(f"hash key file not readable: {key_file}") from None
    else:
        key = os.environ.get(KEY_ENV, "").encode()
        if not key:
            raise HashKeyError()
    if len(key) < MIN_KEY_BYTES:
        raise HashKeyError(f"the hash key is too short: expected at least {MIN_KEY_BYTES} bytes, found {len(key)}")
    return key


def new_key_file(path: Path) -> Path:
    """Writes a random key readable by the owner only (used by `medseq run`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of `value`, domain-separated by `kind` (series, patient, site...)."""
    if not value:
        return ""
    return hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()


def split_fraction(salt: str, patient_id: str) -> float:
    """A patient's place in [0, 1) for the split, from a public salt (see SplitConfig)."""
    digest = hmac.new(salt.encode(), patient_id.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _risky(part: str, identifiers: tuple[str, ...]) -> bool:
    if _DICOMDIR_NAME.match(part):
        return False
    lowered = part.lower()
    return bool(_UID_LIKE.search(part) or _DIGIT_RUN.search(part)
                or any(value.lower() in lowered for value in identifiers))


def identifier_values(*values: str) -> tuple[str, ...]:
    """Header values (and name parts) a path must not show; short fragments are ignored."""
    found = set()
    for value in values:
        for part in [value, *re.split(r"[\^ ,_.\-]+", value)]:
            if len(part.strip()) >= 3:
                found.add(part.strip())
    return tuple(sorted(found))


def series_identifiers(headers: Iterable[FileHeader]) -> tuple[str, ...]:
    """Every identifier value of a series' headers, ready for `safe_relpath`."""
    return identifier_values(*{value for header in headers for value in header.identifiers})


def safe_relpath(path: str, root: str, key: bytes, identifiers: tuple[str, ...] = ()) -> str:
    """The path relative to the input root, every part that may identify replaced by a keyed hash.

    Exports name folders after patient IDs, names or UIDs (pydicom's own dicomdirtests
    folders are patient IDs), so a part is hashed when it holds a UID, a run of five or
    more digits, or any of the series' header `identifiers`.
    """
    rel = path[len(root):].lstrip("/") if path.startswith(root) else path.rsplit("/", 1)[-1]
    parts = [f"h-{keyed_hash(key, 'path', p)[:12]}" if _risky(p, identifiers) else p for p in rel.split("/")]
    return "/".join(parts)


def record_source(series_source: str, position: int | None) -> str:
    """What a record's series_key hashes: the series, or one slice position of a 4-D series."""
    return series_source if position is None else f"{series_source}/position/{position}"
