"""Where the ingest job's files come from (graph.Source): a folder or a glob on any
filesystem here; a DICOMweb archive in dicomweb (DicomwebSource), whose series are
fetched by the job's own first steps.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ...pipeline.errors import InputError
from ..io import storage

if TYPE_CHECKING:
    from .graph import Graph


def input_pattern(input_path: str) -> tuple[str, str]:
    """(glob pattern, root) for a folder or a glob, on any Beam filesystem."""
    if any(ch in input_path for ch in "*?["):
        first = min(i for i, ch in enumerate(input_path) if ch in "*?[")
        root = input_path[:first].rsplit("/", 1)[0]  # the folder above the first wildcard
        return input_path, root
    if not storage.remote(input_path) and not storage.exists(input_path):  # object stores have no folders
        raise InputError(f"input not found: {input_path} (expected a folder or a glob of DICOM files)")
    if not storage.remote(input_path) and os.path.isdir(input_path):
        try:
            os.listdir(input_path)
        except OSError as exc:
            raise InputError(f"cannot list the input folder {input_path} ({exc.strerror or type(exc).__name__}); "
                             "expected a folder medseq may list and read") from None
    root = input_path.rstrip("/")
    return f"{root}/**", root


def _require_files(pattern: str, input_path: str) -> None:
    """Fails early, in one line, when the input matches no file at all (one listing entry)."""
    try:
        found = storage.match(pattern, limit=1)
    except Exception:  # noqa: BLE001 - Beam raises for an empty glob on some filesystems
        found = []
    if not found:
        raise InputError(f"no files found in {input_path} (expected DICOM files in it or matching it)")


class FilesSource:
    """A folder (every file under it) or a glob, local or on any filesystem of Beam's:
    listed by one step, then spread so that the header reads run on every worker."""

    def __init__(self, input_path: str) -> None:
        self.input_path = input_path
        self.pattern, self.root = input_path, input_path

    def check(self) -> None:
        """The input is there and holds a file, or one line saying what was found."""
        self.pattern, self.root = input_pattern(self.input_path)
        _require_files(self.pattern, self.input_path)

    def paths(self, g: Graph, staging: str) -> tuple[Any, None]:
        # The match is one element's fan-out: without a reshuffle every header read would
        # run in the bundle (and worker) that listed the files.
        return g.spread("SpreadFiles", g.files("MatchFiles", self.pattern)), None

    def done(self, staging: str) -> None:
        pass
