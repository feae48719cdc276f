"""A real Orthanc with its DICOMweb plugin, started on free loopback ports for a test and
stopped by its PID (Debian's `orthanc` and `orthanc-dicomweb`; `.ci/run` installs them).

Also a fault-injecting HTTP proxy to put in front of it: what a hospital network does
to a long download (503s with Retry-After, a stalled response, a cut connection).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PLUGIN_PATHS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7")
USER, PASSWORD = "medseq", "not-a-real-secret-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 90) -> None:
    """Until something answers on loopback `port`; fails at once if `process` (the one
    meant to serve it) exits, and after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process serving port {port} exited ({process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port} within {seconds} s")


def orthanc_binary() -> tuple[str, str]:
    """(Orthanc, its DICOMweb plugin), or the test skips (fails in CI) naming the packages."""
    binary = shutil.which("Orthanc") or (os.path.exists("/usr/sbin/Orthanc") and "/usr/sbin/Orthanc") or ""
    plugin = next((p for p in PLUGIN_PATHS if os.path.exists(p)), "")
    if binary and plugin:
        return binary, plugin
    message = "Orthanc with DICOMweb is not installed (apt-get install orthanc orthanc-dicomweb)"
    if os.environ.get("CI"):
        pytest.fail(message + "; .ci/run installs them")
    pytest.skip(message)


class Orthanc:
    """One Orthanc process over one storage folder; `stop()` and `start()` keep the data."""

    def __init__(self, folder: Path) -> None:
        binary, plugin = orthanc_binary()
        self.folder, self.binary = folder, binary
        self.port = free_port()
        self.config = folder / "orthanc.json"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps({
            "Name": "medseq-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "HttpPort": self.port, "DicomPort": free_port(), "DicomServerEnabled": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpCompressionEnabled": False, "StorageCompression": False, "HttpThreadsCount": 16,
        }))
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def start(self) -> None:
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=log,
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.rest("GET", "/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.process.poll() is not None:
                    log = (self.folder / "orthanc.log").read_text()[-2000:]
                    raise RuntimeError(f"Orthanc exited at start: {log}") from None
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=30)
        self.process = None

    def rest(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method)
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

    def upload(self, files: list[Path]) -> list[Path]:
        """Stores `files` (STOW through Orthanc's REST API); returns those it took (it
        refuses a file that is not DICOM with 400)."""

        def one(path: Path) -> Path | None:
            try:
                self.rest("POST", "/instances", path.read_bytes())
                return path
            except urllib.error.HTTPError as exc:
                if exc.code in (400, 404):  # 404 "Inexistent tag": a file missing a tag Orthanc indexes
                    return None
                raise

        with ThreadPoolExecutor(8) as pool:
            return [p for p in pool.map(one, files) if p is not None]

    def delete_series(self, series_uid: str) -> None:
        found = json.loads(self.rest("POST", "/tools/lookup", series_uid.encode()))
        for item in found:
            if item["Type"] == "Series":
                self.rest("DELETE", item["Path"])


class FaultyProxy:
    """An HTTP proxy in front of Orthanc's port that answers the first request whose path
    matches a pattern (re.search) of `faults` as it says, once: ("status", code,
    retry_after), ("stall", seconds) after 100 bytes of the body, or ("cut", fraction) to
    close the connection after that part of the body."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.faults: list[tuple[str, tuple[object, ...]]] = []  # (path pattern, fault), each used once
        self.before: dict[str, Callable[[], None]] = {}  # path part -> called once before forwarding
        self.delay = 0.0  # seconds before each request is forwarded
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.seen.append(self.path)
                time.sleep(proxy.delay)
                for part in [p for p in proxy.before if p in self.path]:
                    proxy.before.pop(part)()
                fault = proxy.take(self.path)
                if fault and fault[0] == "status":
                    self.send_response(int(fault[1]))  # type: ignore[call-overload]
                    if fault[2] is not None:
                        self.send_header("Retry-After", str(fault[2]))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = urllib.request.Request(f"http://127.0.0.1:{proxy.target_port}{self.path}")
                for name in ("Accept", "Authorization", "Accept-Encoding"):
                    if self.headers.get(name):
                        upstream.add_header(name, self.headers[name])
                try:
                    with urllib.request.urlopen(upstream, timeout=60) as response:
                        status, headers, body = response.status, response.headers, response.read()
                except urllib.error.HTTPError as exc:
                    status, headers, body = exc.code, exc.headers, exc.read()
                except (urllib.error.URLError, OSError):  # the archive is gone: so is the connection
                    self.close_connection = True
                    return
                self.send_response(status)
                for name in ("Content-Type", "Retry-After"):
                    if headers.get(name):
                        self.send_header(name, headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault and fault[0] == "stall":
                    self.wfile.write(body[:100])
                    self.wfile.flush()
                    time.sleep(float(fault[1]))  # type: ignore[arg-type]
                elif fault and fault[0] == "cut":
                    self.wfile.write(body[: int(len(body) * float(fault[1]))])  # type: ignore[arg-type]
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def take(self, path: str) -> tuple[object, ...] | None:
        for i, (pattern, fault) in enumerate(self.faults):
            if re.search(pattern, path):
                del self.faults[i]
                return fault
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
