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
from collections.abc import Container, Iterable
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
_RUN = re.compile(r"[^\W_]+")  # letters and digits, any script
_MAX_RUN = 40  # longer runs are matched whole: every substring of them would cost too much


def key_from_environment() -> bytes:
    """$MEDSEQ_HASH_KEY as the bytes the environment holds (any encoding), surrounding
    white space removed as from a key file; b"" when unset."""
    return os.environb.get(KEY_ENV.encode(), b"").strip()


def load_key(key_file: str | None = None) -> bytes:
    """The secret key: the key file if given, else $MEDSEQ_HASH_KEY (any bytes, not only
    UTF-8); at least MIN_KEY_BYTES of them once white space around it is removed, so that
    a key of spaces is refused as the empty key it is."""
    if key_file:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError:
            raise HashKeyError(f"hash key file not readable: {key_file}") from None
        where = "the hash key file"
    else:
        key, where = key_from_environment(), f"${KEY_ENV}"
        if not key and os.environb.get(KEY_ENV.encode()) is None:
            raise HashKeyError()
    if len(key) < MIN_KEY_BYTES:
        raise HashKeyError(f"{where}: the hash key is too short: expected at least {MIN_KEY_BYTES} bytes besides "
                           f"white space, found {len(key)}")
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


def _risky(part: str, tokens: Container[str]) -> bool:
    if _DICOMDIR_NAME.match(part):
        return False
    if "^" in part or _UID_LIKE.search(part) or _DIGIT_RUN.search(part):  # ^ parts a DICOM person name
        return True
    lowered = part.lower()
    if lowered in tokens:
        return True
    for run in _RUN.findall(lowered):  # any identifier token inside a run of letters and digits
        if len(run) > _MAX_RUN:
            if run in tokens:
                return True
            continue
        if any(run[i:j] in tokens for i in range(len(run) - 2) for j in range(i + 3, len(run) + 1)):
            return True
    return False


def identifier_tokens(*values: str) -> frozenset[str]:
    """What a reported path must not show of these header values: each value and each
    run of three or more letters or digits in it, lower-cased (a patient's name parts,
    an alphanumeric ID, an institution's words)."""
    found = set()
    for value in values:
        text = value.strip().lower()
        if len(text) >= 3:
            found.add(text)
        found.update(run for run in _RUN.findall(text) if len(run) >= 3)
    return frozenset(found)


def series_identifiers(headers: Iterable[FileHeader]) -> frozenset[str]:
    """The identifier tokens of a series' headers."""
    return identifier_tokens(*{value for header in headers for value in header.identifiers})


class AnyOf:
    """Tokens in any of several containers (a series' own and the job's), without a copy."""

    def __init__(self, *containers: Container[str]) -> None:
        self.containers = containers

    def __contains__(self, token: object) -> bool:
        return any(token in c for c in self.containers)


def relative(path: str, root: str) -> str:
    """`path` relative to the input root (its file name where it is not under the root)."""
    return path[len(root):].lstrip("/") if path.startswith(root) else path.rsplit("/", 1)[-1]


def safe_path(rel: str, key: bytes, tokens: Container[str] = frozenset()) -> str:
    """A path relative to the input root with every part that may identify replaced by a
    keyed hash (`h-` and 12 hex digits).

    Exports name folders after patient IDs, names or UIDs (pydicom's own dicomdirtests
    folders are patient IDs), so a part is hashed when it holds a UID, a run of five or
    more digits, a '^' (DICOM's person name delimiter), or any of `tokens`: the job
    passes the identifier tokens of every header it read (`identifier_tokens`), so one
    rule applies to every path of a run, whatever the file's own header says or whether
    it has one. DICOMDIR-style counters are kept.
    """
    parts = [f"h-{keyed_hash(key, 'path', p)[:12]}" if _risky(p, tokens) else p for p in rel.split("/")]
    return "/".join(parts)


def record_source(series_source: str, position: int | None) -> str:
    """What a record's series_key hashes: the series, or one slice position of a 4-D series."""
    return series_source if position is None else f"{series_source}/position/{position}"
