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
from pathlib import Path

from medseq.pipeline.errors import HashKeyError

KEY_ENV = "MEDSEQ_HASH_KEY"
MIN_KEY_BYTES = 16
_UID_LIKE = re.compile(r"^\d+(\.\d+){2,}(\.dcm)?$", re.IGNORECASE)


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


def safe_relpath(path: str, root: str, key: bytes) -> str:
    """The path relative to the input root, with UID-named parts replaced by keyed hashes."""
    rel = path[len(root):].lstrip("/") if path.startswith(root) else path.rsplit("/", 1)[-1]
    parts = [f"uid-{keyed_hash(key, 'path', p)[:16]}" if _UID_LIKE.match(p) else p for p in rel.split("/")]
    return "/".join(parts)
