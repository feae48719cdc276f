"""A hostile or broken DICOMweb archive cannot exhaust or stall the job: QIDO-RS answers
are read within a byte cap, paging that makes no progress stops, a WADO-RS part has a
byte cap, a series and the whole fetch have deadlines, a malformed multipart body is a
dead letter for its series only (a rerun skips it until it changes), and QIDO-RS items
that are not objects end in one line. Against tests/fake_dicomweb.py."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pydicom
import pytest
from fake_dicomweb import FakeDicomweb

from helpers import KEY, SAMPLES, convert
from medseq.components.ingest.dicomweb.client import Service
from medseq.components.ingest.dicomweb.fetch import SeriesFetcher
from medseq.components.ingest.dicomweb.search import SeriesRef
from medseq.pipeline.errors import ArchiveError

pytestmark = pytest.mark.reliability
SERIES = sorted((SAMPLES / "cine_ef" / "dicom").glob("PA00000[0-2]/ST*/SE000003"))


def _uid(series: Path) -> str:
    return str(pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture
def archive():
    server = FakeDicomweb([p for series in SERIES for p in sorted(series.iterdir())])
    try:
        yield server
    finally:
        server.close()


def _config(config, tmp_path: Path, url: str, **dicomweb):
    settings = dataclasses.replace(config.ingest.dicomweb, cache_dir=str(tmp_path / "cache"), retries=1,
                                   backoff_s=0.01, max_backoff_s=0.05, read_timeout_s=5.0, **dicomweb)
    ingest = dataclasses.replace(config.ingest, dicomweb=settings)
    return dataclasses.replace(config, ingest=ingest).on_input(url, config.labels)


def _rejected(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


def test_a_malformed_multipart_body_is_a_dead_letter_for_its_series_only_and_skipped_until_it_changes(
        archive, config, tmp_path):
    broken = _uid(SERIES[1])
    archive.faults[broken] = "unclosed"
    web = _config(config, tmp_path, archive.url)
    first = convert(web, tmp_path / "out", beam_args=())
    assert sum(first.records.values()) == 2 and first.fetch["failed"] == 1
    [row] = [r for r in _rejected(tmp_path / "out") if r["reason"] == "fetch_failed"]
    assert "closing boundary" in str(row["message"]) and broken not in json.dumps(row)
    tries = archive.wado_requests(broken)
    assert tries == 2  # the first try and config.retries: a killed server can look the same
    again = convert(web, tmp_path / "out", beam_args=())
    assert archive.wado_requests(broken) == tries, "a rerun fetches a series that failed for good only once it changes"
    assert "on an earlier run too" in str([r for r in _rejected(tmp_path / "out")
                                           if r["reason"] == "fetch_failed"][0]["message"])
    assert sum(again.records.values()) == 2
    archive.faults.clear()
    archive.series[next(k for k in archive.series if k[1] == broken)].pop()  # the series changes
    fixed = convert(web, tmp_path / "out", beam_args=())
    assert archive.wado_requests(broken) == tries + 1 and sum(fixed.records.values()) == 3


def test_an_endless_instance_stops_at_the_byte_cap_and_the_rest_converts(archive, config, tmp_path):
    archive.faults[_uid(SERIES[0])] = "endless"
    web = _config(config, tmp_path, archive.url, max_instance_mb=4.0)
    got = convert(web, tmp_path / "out", beam_args=())
    [row] = [r for r in _rejected(tmp_path / "out") if r["reason"] == "fetch_failed"]
    assert "max_instance_mb" in str(row["message"]) and sum(got.records.values()) == 2
    cached = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cached < 8 << 20 and archive.sent < 64 << 20  # the part was dropped at its cap, not the disk's


def test_a_series_that_drips_meets_its_deadline_and_the_fetch_meets_its_own(archive, config, tmp_path):
    archive.faults[_uid(SERIES[2])] = "drip"
    web = _config(config, tmp_path, archive.url, series_timeout_s=2.0, concurrency=1)
    started = time.monotonic()
    got = convert(web, tmp_path / "out", beam_args=())
    assert time.monotonic() - started < 60  # a byte every 50 ms would take hours
    [row] = [r for r in _rejected(tmp_path / "out") if r["reason"] == "fetch_failed"]
    assert "deadline" in str(row["message"]) or "no time was left" in str(row["message"])
    assert sum(got.records.values()) == 2
    # The fetch's own deadline: a series not reached by it is a dead letter (a rerun fetches it).
    archive.faults.clear()
    settings = _config(config, tmp_path, archive.url).ingest.dicomweb
    fetcher = SeriesFetcher(Service(archive.url, settings), KEY, tmp_path / "late", deadline_at=time.time() - 1)
    outcome = fetcher(SeriesRef(*next(iter(archive.series)), 18))
    assert outcome.reason == "fetch_failed" and "deadline_s" in outcome.message
    assert not (tmp_path / "late").exists()  # nothing asked, nothing written
    late = _config(config, tmp_path / "late", archive.url, deadline_s=0.001)
    with pytest.raises(ArchiveError, match="deadline_s"):  # not even the search fits in it
        convert(late, tmp_path / "late-out", beam_args=())


def test_paging_that_ignores_offset_stops_and_lists_each_series_once(archive, config, tmp_path):
    archive.ignore_offset = True
    web = _config(config, tmp_path, archive.url, page_size=1)
    got = convert(web, tmp_path / "out", beam_args=())
    assert sum(got.records.values()) == 1 and got.fetch["listed"] == 1  # only the first page exists for it
    assert len(archive.requests) < 20  # not a loop: the old code asked 658 times in 30 s


def test_a_huge_qido_answer_and_items_that_are_not_objects_end_in_one_line(archive, config, tmp_path):
    archive.qido_padding = 3 << 20
    with pytest.raises(ArchiveError, match="max_response_mb"):
        convert(_config(config, tmp_path, archive.url, max_response_mb=1.0), tmp_path / "a", beam_args=())
    archive.qido_padding, archive.non_objects = 0, True
    with pytest.raises(ArchiveError, match="expected a JSON array of DICOM JSON objects, found an array holding str"):
        convert(_config(config, tmp_path, archive.url), tmp_path / "b", beam_args=())
