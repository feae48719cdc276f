"""The DICOMweb client's parts without a server: the multipart splitter on real DICOM
bytes cut at every kind of place, backoff and Retry-After, URL and credential rules,
and labels keyed per study or accession number."""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pydicom
import pytest

from helpers import SAMPLES, convert
from medseq.components.ingest.dicomweb.client import Retryable, Service, credentials, retry_after, service_root
from medseq.components.ingest.dicomweb.multipart import boundary_of, split_parts
from medseq.pipeline.config import DicomwebConfig
from medseq.pipeline.errors import ConfigError


def multipart(parts: list[bytes], boundary: bytes) -> bytes:
    body = b"preamble to ignore\r\n"
    for part in parts:
        body += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
    return body + b"--" + boundary + b"--\r\nepilogue"


def real_files() -> list[bytes]:
    names = ("MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "JPGExtended.dcm", "image_dfl.dcm")
    return [Path(pydicom.data.get_testdata_file(n)).read_bytes() for n in names]


class Sink(io.BytesIO):
    def close(self) -> None:  # keep the value readable after split_parts closes it
        self.closed_by_splitter = True


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096, 1 << 20])
def test_parts_come_out_byte_identical_however_the_stream_is_cut(chunk):
    files = real_files()
    boundary = b"medseq-7d2f9a"
    body = multipart(files, boundary)
    rng = random.Random(chunk)
    pieces, at = [], 0
    while at < len(body):
        size = rng.randint(1, chunk)
        pieces.append(body[at:at + size])
        at += size
    sinks: list[Sink] = []
    count = split_parts(pieces, boundary, lambda i: sinks.append(Sink()) or sinks[-1])
    assert count == len(files)
    assert [s.getvalue() for s in sinks] == files


def test_a_response_cut_before_its_closing_boundary_is_retryable():
    body = multipart(real_files(), b"b0undary")
    with pytest.raises(Retryable, match="closing boundary"):
        split_parts([body[: len(body) // 2]], b"b0undary", lambda i: Sink())


def test_boundary_is_read_from_the_content_type():
    assert boundary_of('multipart/related; type="application/dicom"; boundary="abc-123"') == b"abc-123"
    assert boundary_of("multipart/related; boundary=xyz; type=application/dicom") == b"xyz"
    with pytest.raises(Retryable, match="multipart/related"):
        boundary_of("application/json")


def test_backoff_doubles_with_full_jitter_caps_and_honours_retry_after():
    service = Service("http://127.0.0.1:1/dicom-web", DicomwebConfig(backoff_s=1.0, max_backoff_s=8.0), seed=3)
    waits = [[service.backoff(attempt, None) for _ in range(200)] for attempt in range(6)]
    assert all(0 <= w <= min(8.0, 2 ** a) for a, ws in enumerate(waits) for w in ws)
    assert max(waits[0]) <= 1.0 < max(waits[2])  # it grows
    assert max(waits[5]) <= 8.0 and len({round(w, 3) for w in waits[5]}) > 100  # capped, and jittered
    assert service.backoff(0, 5.0) == 5.0  # never sooner than the server asked
    assert service.backoff(0, 100.0) == 8.0  # nor longer than the cap


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after("3") == 3.0
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 < (retry_after(format_datetime(later, usegmt=True)) or 0) <= 30
    assert retry_after(None) is None and retry_after("soon") is None


def test_plain_http_only_to_loopback_and_no_credentials_in_the_url():
    assert service_root("http://127.0.0.1:8042/dicom-web/") == "http://127.0.0.1:8042/dicom-web"
    assert service_root("http://[::1]:8042/dicom-web") == "http://[::1]:8042/dicom-web"
    assert service_root("https://pacs.example.org/dicom-web") == "https://pacs.example.org/dicom-web"
    with pytest.raises(ConfigError, match="not a loopback address"):
        service_root("http://pacs.example.org/dicom-web")
    assert service_root("http://pacs.example.org/dicom-web", allow_http=True)
    with pytest.raises(ConfigError, match="without a query, fragment or credentials"):
        service_root("https://user:secret@pacs.example.org/dicom-web")


def test_credentials_come_from_the_environment_or_files(monkeypatch, tmp_path):
    for name in ("TOKEN", "USER", "PASSWORD"):
        monkeypatch.delenv(f"MEDSEQ_DICOMWEB_{name}", raising=False)
        monkeypatch.delenv(f"MEDSEQ_DICOMWEB_{name}_FILE", raising=False)
    assert credentials() == {}
    (tmp_path / "token").write_text("tok-123\n")
    monkeypatch.setenv("MEDSEQ_DICOMWEB_TOKEN_FILE", str(tmp_path / "token"))
    assert credentials() == {"headers": {"Authorization": "Bearer tok-123"}}
    monkeypatch.delenv("MEDSEQ_DICOMWEB_TOKEN_FILE")
    monkeypatch.setenv("MEDSEQ_DICOMWEB_USER", "reader")
    with pytest.raises(ConfigError, match="MEDSEQ_DICOMWEB_PASSWORD"):
        credentials()
    monkeypatch.setenv("MEDSEQ_DICOMWEB_PASSWORD", "pw")
    assert credentials() == {"auth": ("reader", "pw")}


def _labels_by(column: str, keyword: str, tmp_path: Path) -> tuple[Path, Path]:
    """labels.csv keyed by every series' UID, and the same labels keyed by `column`
    (each study's label on every series of the study)."""
    by_series = {r["series_instance_uid"]: r["label"] for r in csv.DictReader(
        (SAMPLES / "cine_ef" / "labels.csv").open())}
    study_label: dict[str, str] = {}
    series_of: dict[str, str] = {}
    for path in (SAMPLES / "cine_ef" / "dicom").rglob("*"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, IsADirectoryError):
            continue
        series_of[str(ds.SeriesInstanceUID)] = str(ds.get(keyword))
        if str(ds.SeriesInstanceUID) in by_series:
            study_label[str(ds.get(keyword))] = by_series[str(ds.SeriesInstanceUID)]
    every = tmp_path / "every_series.csv"
    every.write_text("series_instance_uid,label\n" + "".join(
        f"{s},{study_label[k]}\n" for s, k in sorted(series_of.items()) if k in study_label))
    keyed = tmp_path / f"by_{column}.csv"
    keyed.write_text(f"label,{column}\n" + "".join(f"{v},{k}\n" for k, v in sorted(study_label.items())))
    return every, keyed


@pytest.mark.parametrize(("column", "keyword"), [("study_instance_uid", "StudyInstanceUID"),
                                                 ("accession_number", "AccessionNumber")])
def test_labels_per_study_label_every_series_of_the_study(config, tmp_path, column, keyword):
    every, keyed = _labels_by(column, keyword, tmp_path)
    dicom = str(SAMPLES / "cine_ef" / "dicom")
    per_series = convert(config.on_input(dicom, str(every)), tmp_path / "series", beam_args=())
    per_study = convert(config.on_input(dicom, str(keyed)), tmp_path / "study", beam_args=())
    assert per_study.records == per_series.records and sum(per_study.records.values()) >= 36
    # The study's label reached its other series: labels.csv per series left 36 unlabeled.
    assert per_study.qc["rejected"] == per_series.qc["rejected"]
    assert per_study.qc["rejected"].get("unlabeled", 0) < 36
    for split in ("train", "eval", "test"):
        a = sorted((tmp_path / "series" / split).iterdir())
        b = sorted((tmp_path / "study" / split).iterdir())
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert per_study.qc["labels_csv"]["not_found"] == 0


def test_a_search_that_keeps_failing_names_no_uid():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Busy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        service = Service(f"http://127.0.0.1:{server.server_address[1]}/dicom-web",
                          DicomwebConfig(retries=1, backoff_s=0.01))
        uid = "1.2.826.0.1.3680043.8.498.99887766"
        with pytest.raises(Retryable) as raised:
            service.search(f"studies/{uid}/series/{uid}.1/instances", {})
        assert "HTTP 503" in str(raised.value) and "2 tries" in str(raised.value) and uid not in str(raised.value)
    finally:
        server.shutdown()
        server.server_close()
