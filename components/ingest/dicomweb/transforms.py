"""The fetch on Beam, for archives too large for one process: `fetch_on_beam` and its DoFn."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics

from ....pipeline.config import DicomwebConfig
from ....pipeline.errors import ArchiveError
from ...io.beam import pipeline as beam_pipeline
from .client import Service
from .fetch import ARCHIVE_GONE, STAGING_PREFIX, Outcome, SeriesFetcher
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


def fetch_on_beam(root: str, config: DicomwebConfig, key: bytes, cache: Path, refs: list[SeriesRef],
                  beam_args: list[str], deadline_at: float | None = None) -> list[Outcome]:
    """Every series fetched inside Beam DoFns: the series dealt into `concurrency` groups,
    each fetched one series after another, so no runner fetches more at once."""
    results = cache / f"{STAGING_PREFIX}outcomes-{uuid.uuid4().hex[:8]}"
    groups = [(i % config.concurrency, (ref.study_uid, ref.series_uid, ref.instances)) for i, ref in enumerate(refs)]
    try:
        with beam_pipeline(beam_args) as pipeline:
            _ = (pipeline
                 | "Series" >> beam.Create(groups)
                 | "DealSeries" >> beam.GroupByKey()
                 | "FetchSeries" >> beam.ParDo(FetchSeriesDoFn(root, config, key, str(cache), deadline_at))
                 | "WriteOutcomes" >> beam.io.WriteToText(str(results / "outcome"), file_name_suffix=".jsonl"))
        lines = [line for path in sorted(results.iterdir()) for line in path.read_text().splitlines() if line]
    finally:
        shutil.rmtree(results, ignore_errors=True)
    return sorted((Outcome.from_json(line) for line in lines), key=lambda o: o.series_key)
