"""A DICOMweb service on loopback that serves real DICOM files and misbehaves on demand:
the hostile or broken archive of tests/reliability/test_hostile_archive.py.

QIDO-RS answers studies, series and instances of the files it holds (DICOM JSON with the
UIDs and counts medseq asks for); WADO-RS answers a series as multipart/related, one part
per file. `faults` maps a series UID to how its WADO-RS answer misbehaves; the other
switches change every QIDO-RS answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom

BOUNDARY = "medseq-test-boundary"


class FakeDicomweb:
    """`faults[series_uid]`: "endless" (one part that never ends), "drip" (a byte at a
    time, each within the read timeout), "unclosed" (the body ends in order without its
    closing boundary). `ignore_offset`: every QIDO-RS page is the first one; `qido_padding`:
    bytes of white space after each QIDO-RS answer's JSON; `non_objects`: the study
    search answers an array of strings."""

    def __init__(self, files: list[Path]) -> None:
        self.series: dict[tuple[str, str], list[tuple[str, bytes]]] = defaultdict(list)
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            self.series[(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))].append(
                (str(ds.SOPInstanceUID), path.read_bytes()))
        self.faults: dict[str, str] = {}
        self.ignore_offset = False
        self.qido_padding = 0
        self.non_objects = False
        self.requests: list[str] = []
        self.sent = 0  # WADO-RS body bytes sent
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                service.requests.append(self.path)
                try:
                    service.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wado_requests(self, series_uid: str) -> int:
        return sum(1 for r in self.requests if r.split("?")[0].endswith(f"/series/{series_uid}"))

    # -- answers ---------------------------------------------------------------------

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        parts = url.path.split("/")[2:]  # after /dicom-web
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if parts == ["studies"]:
            items = sorted({study for study, _ in self.series})
            self.qido(handler, query, ["x"] * 3 if self.non_objects else
                      [{"0020000D": {"vr": "UI", "Value": [s]}} for s in items])
        elif len(parts) == 3 and parts[2] == "series":
            self.qido(handler, query, [{"0020000E": {"vr": "UI", "Value": [series]},
                                        "00201209": {"vr": "IS", "Value": [len(files)]}}
                                       for (study, series), files in sorted(self.series.items())
                                       if study == parts[1]])
        elif len(parts) == 5 and parts[4] == "instances":
            files = self.series.get((parts[1], parts[3]), [])
            self.qido(handler, query, [{"00080018": {"vr": "UI", "Value": [sop]}} for sop, _ in files])
        elif len(parts) == 4 and parts[2] == "series":
            self.wado(handler, parts[3], self.series.get((parts[1], parts[3]), []))
        else:
            self.send(handler, 404, b"", "text/plain")

    def qido(self, handler: BaseHTTPRequestHandler, query: dict[str, str], items: list[object]) -> None:
        offset = 0 if self.ignore_offset else int(query.get("offset", 0))
        limit = int(query.get("limit", len(items) or 1))
        body = json.dumps(items[offset:offset + limit]).encode() + b" " * self.qido_padding
        self.send(handler, 200, body, "application/dicom+json")

    def send(self, handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def wado(self, handler: BaseHTTPRequestHandler, series_uid: str, files: list[tuple[str, bytes]]) -> None:
        fault = self.faults.get(series_uid)
        handler.send_response(200)
        handler.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        handler.send_header("Connection", "close")  # the body ends when the connection does, in order
        handler.end_headers()
        handler.close_connection = True
        head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        if fault == "endless":
            handler.wfile.write(head)
            chunk = bytes(1 << 20)
            while True:  # until the client hangs up
                handler.wfile.write(chunk)
                self.sent += len(chunk)
        body = b"".join(head + data + b"\r\n" for _, data in files)
        if fault != "unclosed":
            body += f"--{BOUNDARY}--\r\n".encode()
        if fault == "drip":
            for i in range(len(body)):
                handler.wfile.write(body[i:i + 1])
                handler.wfile.flush()
                time.sleep(0.05)
            return
        handler.wfile.write(body)
        self.sent += len(body)
