"""A whole federation on one machine, on loopback: the SuperLink and one SuperNode per site
as processes of their own (`medseq federate link` / `site`), each in its own session and
stopped by its PID with its children. What the tests and benchmarks/bench_federated.py
start; also a way to rehearse a consortium's run before the sites go live."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from ...pipeline.errors import InputError
from . import Tls


def free_ports(n: int) -> list[int]:
    """`n` loopback ports free now (bound, read, released)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _medseq(*args: str) -> list[str]:
    return [sys.executable, "-m", "medseq.pipeline.cli", *args]


class LocalFederation:
    """`with LocalFederation(root, sites) as fed:` a SuperLink at `fed.superlink` and a
    SuperNode per site (name -> (its records, its config file or "")); logs and ledgers
    under `root`. `stop_site(name, SIGKILL)` and `start_site(name)` drop a site and bring
    it back (a new SuperNode on the same records). With `keys` (site name -> its private
    key, the public key beside it as KEY.pub; over TLS only) the SuperLink admits
    registered sites only, and each of those sites' public keys is registered before it
    starts with its private key."""

    def __init__(self, root: str | Path, sites: dict[str, tuple[str | Path, str | Path]],
                 env: dict[str, str] | None = None, tls: Tls | None = None,
                 keys: dict[str, str] | None = None) -> None:
        self.root, self.sites, self.tls, self.keys = Path(root), sites, tls, keys
        self.env = {**os.environ, **(env or {})}
        self.link_port, *self.ports = free_ports(1 + 2 * len(sites))
        self.superlink = f"127.0.0.1:{self.link_port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.spare = iter(self.ports[len(sites):])

    def _start(self, name: str, command: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / f"{name}.log").open("a")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)

    def start_site(self, name: str, port: int | None = None) -> None:
        records, config = self.sites[name]
        self._start(name, _medseq("federate", "site", "--superlink", self.superlink, "--records", str(records),
                                  "--out", str(self.root / name), "--port", str(port or next(self.spare)),
                                  *(["--config", str(config)] if config else []),
                                  *(["--tls-ca", self.tls.ca] if self.tls else []),
                                  *(["--auth-key", self.keys[name]] if self.keys and name in self.keys else [])))

    def stop_site(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(name, None)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, sig)
            process.wait(timeout=60)

    def ledger(self, name: str) -> Path:
        """The site's ledger of sent messages (apps.SENT_FILE)."""
        from .records import SENT_FILE

        return self.root / name / SENT_FILE

    def __enter__(self) -> LocalFederation:
        tls = ["--tls-ca", self.tls.ca, "--tls-cert", self.tls.cert, "--tls-key", self.tls.key] if self.tls else []
        admit = ["--authenticate"] if self.keys is not None else []
        self._start("link", _medseq("federate", "link", "--port", str(self.link_port), "--state",
                                    str(self.root / "link"), *tls, *admit))
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.link_port)) == 0:
                    break
            if time.monotonic() > deadline or self.processes["link"].poll() is not None:
                self.close()
                raise InputError(f"the SuperLink did not start; its log: {self.root / 'link.log'}")
            time.sleep(0.5)
        for name in self.keys or {}:
            self.register(name)
        for name, port in zip(self.sites, self.ports, strict=False):
            self.start_site(name, port)
        return self

    def register(self, name: str) -> int:
        """Registers site `name`'s public key (its private key's path + .pub) at the SuperLink."""
        from . import register as register_key

        assert self.keys is not None
        return register_key(self.superlink, self.keys[name] + ".pub", self.tls)

    def close(self) -> None:
        for name in list(self.processes):
            self.stop_site(name)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
