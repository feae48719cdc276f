"""Content fingerprints of the artifacts stages hand each other: a SavedModel folder,
a split of records. SHA-256 over every file's relative path and bytes, in path order,
so the same content gives the same fingerprint wherever it lies."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def _update_with_file(digest: hashlib._Hash, path: Path) -> int:
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size


def tree_fingerprint(root: str | Path, exclude: tuple[str, ...] = ()) -> str:
    """sha256 of the files under `root` (relative paths starting with an `exclude` entry left out)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(exclude):
            continue
        digest.update(rel.encode() + b"\0")
        _update_with_file(digest, path)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def files_fingerprint(paths: list[str]) -> dict[str, object]:
    """sha256 over the bytes of `paths` in their sorted order (names left out: the same
    records in a renamed folder keep their fingerprint), with the file count and bytes."""
    digest = hashlib.sha256()
    total = 0
    for path in sorted(paths):
        total += _update_with_file(digest, Path(path))
        digest.update(b"\0")
    return {"sha256": digest.hexdigest(), "files": len(paths), "bytes": total}
