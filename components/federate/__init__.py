"""Federated training: hospitals train one model together, their records never leaving them.

Built on Flower's Deployment Engine (`pip install 'medseq[federated]'`):
- the coordinator runs a SuperLink (`medseq federate link`);
- each site runs its own ingest (its own hash key, its own qc.json), then a SuperNode
  whose ClientApp trains medseq's model on its records (`medseq federate site`);
- `medseq federate run` starts the run on the SuperLink: the ServerApp (coordinator.py)
  checks that the sites agree, runs `federate.rounds` rounds of the configured
  aggregator, pools the training domain and writes OUT/model, a normal candidate for
  `medseq evaluate`, push and export, with OUT/federation.json, the run's record.

Only weights, record counts, split-level metrics and the sums that pool the domain
reference leave a site (site.py); each site's ledger (OUT/sent.jsonl) lists every message
it sent. The apps run in the processes Flower starts for them, from the installed medseq:
nothing is installed at run time (`--disable-runtime-dependency-installation`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ...pipeline.config import PipelineConfig, to_dict
from ...pipeline.errors import InputError
from .records import MODEL_DIR, RECORD_FILE, SENT_FILE

__all__ = ["MODEL_DIR", "RECORD_FILE", "SENT_FILE", "Tls", "link_command", "run", "site_command"]

APP_NAME = "medseq-federated"
CONNECTION = "federation"


@dataclass(frozen=True)
class Tls:
    """TLS between the SuperLink and its SuperNodes: the CA certificate every side trusts,
    and the SuperLink's own certificate and key (the coordinator's only)."""

    ca: str
    cert: str = ""
    key: str = ""


def _executable(name: str) -> str:
    """A Flower command beside this interpreter (the environment medseq runs in)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise InputError(f"federated training needs Flower ({name} not found beside {sys.executable}): "
                         "pip install 'medseq[federated]'")
    return str(path)


def environment() -> dict[str, str]:
    """This environment with its bin folder first on PATH: the SuperLink and SuperNodes start
    flwr-serverapp and flwr-clientapp from there."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def _readable(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise InputError(f"{what} not found or not readable: {path}")
    return str(Path(path).resolve())


def link_command(port: int, state: str | Path, host: str = "127.0.0.1", tls: Tls | None = None) -> list[str]:
    """The SuperLink of a federation, its state (runs, nodes) in STATE/superlink.db."""
    Path(state).mkdir(parents=True, exist_ok=True)
    command = [_executable("flower-superlink"), "--host", host, "--port", str(port), "--database",
               str(Path(state).resolve() / "superlink.db"), "--disable-runtime-dependency-installation"]
    if tls is None:
        return [*command, "--insecure"]
    return [*command, "--ssl-ca-certfile", _readable(tls.ca, "TLS CA certificate"),
            "--ssl-certfile", _readable(tls.cert, "TLS certificate"), "--ssl-keyfile", _readable(tls.key, "TLS key")]


def site_command(superlink: str, records: str | Path, out: str | Path, port: int, config: str = "",
                 tls: Tls | None = None) -> list[str]:
    """A site's SuperNode: its records, its config file (empty: the shipped one) and the
    folder of its ledger, as Flower node config."""
    from ..io.examples import record_spec

    record_spec(records)  # one line now if the folder is not an ingest output
    node = {"records": str(Path(records).resolve()), "config": str(Path(config).resolve()) if config else "",
            "out": str(Path(out).resolve())}
    command = [_executable("flower-supernode"), "--superlink", superlink, "--port", str(port), "--node-config",
               " ".join(f"{k}={json.dumps(v)}" for k, v in node.items())]
    if tls is None:
        return [*command, "--insecure"]
    return [*command, "--root-certificates", _readable(tls.ca, "TLS CA certificate")]


def _app(folder: Path) -> Path:
    """The Flower App project `flwr run` bundles: its pyproject only, naming medseq's apps."""
    from ...pipeline import __version__

    folder.mkdir(parents=True, exist_ok=True)

    (folder / "pyproject.toml").write_text(f'''[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "{__version__}"
description = "medseq's federated training: its ServerApp and ClientApp, from the installed medseq"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "medseq"

[tool.flwr.app.components]
serverapp = "medseq.components.federate.apps:server"
clientapp = "medseq.components.federate.apps:client"

[tool.flwr.app.config]
settings = ""
''')
    return folder


def reachable(superlink: str, tls: Tls | None, seconds: float = 10.0) -> None:
    """Raises FederationError in one line unless something listens at `superlink` (and,
    with `tls`, presents a certificate the CA signed for that address)."""
    import socket
    import ssl

    from .records import FederationError

    host, _, port = superlink.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=seconds) as raw:
            if tls is not None:
                context = ssl.create_default_context(cafile=_readable(tls.ca, "TLS CA certificate"))
                with context.wrap_socket(raw, server_hostname=host):
                    pass
    except ssl.SSLCertVerificationError:
        ca = tls.ca if tls else ""
        raise FederationError(f"the SuperLink at {superlink} presented a certificate that --tls-ca {ca} does not "
                              "trust (TLS verification failed)") from None
    except ssl.SSLError as exc:
        raise FederationError(f"the SuperLink at {superlink} did not complete a TLS handshake ({exc.reason}); "
                              "is it started with --tls-ca, --tls-cert and --tls-key?") from None
    except (OSError, ValueError):
        raise FederationError(f"nothing answers at {superlink}; expected a SuperLink (medseq federate link)") from None


def run(config: PipelineConfig, superlink: str, out: str | Path, tls: Tls | None = None,
        timeout: float | None = None) -> Path:
    """A federated run on the SuperLink at `superlink` (its Control API, host:port): the
    model into OUT/model and the run's record into OUT/federation.json. Raises
    FederationError with the coordinator's one line when it fails."""
    import tomli_w

    from ..io.output_lock import claim
    from .records import COORDINATOR, FAILED, FederationError, failure_line

    reachable(superlink, tls)
    out = Path(out).resolve()
    claim(str(out), "federation output folder")
    work = out / ".flower"
    app = _app(work / "app")
    connection: dict[str, object] = {"address": superlink}
    if tls is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = _readable(tls.ca, "TLS CA certificate")
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION,
                                                                   CONNECTION: connection}}))
    settings = work / "run_config.toml"
    settings.write_text(tomli_w.dumps({"settings": json.dumps({"config": json.dumps(to_dict(config)),
                                                               "out": str(out)})}))
    (out / RECORD_FILE).unlink(missing_ok=True)
    command = [_executable("flwr"), "run", str(app), CONNECTION, "--stream", "--run-config", str(settings)]
    lines: list[str] = []
    with subprocess.Popen(command, env={**environment(), "FLWR_HOME": str(home)}, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as flwr, \
            (work / "run.log").open("w") as log:
        assert flwr.stdout is not None
        for line in flwr.stdout:  # Flower's log of the run, kept; the coordinator's own lines shown
            log.write(line)
            lines.append(line)
            if COORDINATOR in line and FAILED not in line:
                print(COORDINATOR + line.split(COORDINATOR, 1)[1].rstrip(), flush=True)
        flwr.wait(timeout)
    if not (out / RECORD_FILE).exists():
        raise FederationError(failure_line("".join(lines)) or f"the federated run ended without a model (flwr "
                                                              f"run exit {flwr.returncode}); its log: "
                                                              f"{work / 'run.log'}")
    return out / MODEL_DIR
