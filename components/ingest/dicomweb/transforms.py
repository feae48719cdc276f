"""The fetch as a Beam DoFn (fetch.fetch_on_beam), for archives too large for one process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics

from ....pipeline.config import DicomwebConfig
from ....pipeline.errors import ArchiveError
from .client import Service
from .fetch import ARCHIVE_GONE, Outcome, SeriesFetcher
from .search import SeriesRef


class FetchSeriesDoFn(beam.DoFn):  # type: ignore[misc]
    """(group, series) -> Outcome JSON lines; the series of a group one after another."""

    def __init__(self, root: str, config: DicomwebConfig, key: bytes, cache: str,
                 deadline_at: float | None = None) -> None:
        self.root, self.config, self.key, self.cache, self.deadline_at = root, config, key, cache, deadline_at
        self.fetched = Metrics.counter("medseq.dicomweb", "series_fetched")
        self.unchanged = Metrics.counter("medseq.dicomweb", "series_unchanged")
        self.failed = Metrics.counter("medseq.dicomweb", "series_failed")

    def setup(self) -> None:
        # Credentials are read here, from the worker's environment, never shipped in the DoFn.
        self.fetcher = SeriesFetcher(Service(self.root, self.config), self.key, Path(self.cache), self.deadline_at)

    def process(self, element: tuple[int, Iterable[tuple[str, str, int]]]) -> Iterator[str]:
        for study, series, instances in sorted(element[1]):
            try:
                outcome = self.fetcher(SeriesRef(study, series, instances))
            except ArchiveError as exc:  # the job stops; Beam must not retry the bundle for it
                yield Outcome("", "", "", instances, reason=ARCHIVE_GONE, message=str(exc)).to_json()
                return
            (self.failed if outcome.reason else self.fetched if outcome.fetched else self.unchanged).inc()
            yield outcome.to_json()
