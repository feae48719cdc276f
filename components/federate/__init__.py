"""Federated training: hospitals train one model together, their records never leaving them.

Built on Flower's Deployment Engine (`pip install 'medseq[federated]'`):
- the coordinator runs a SuperLink (`medseq federate link`; with `--authenticate` it
  admits only sites whose public key it registered: `medseq federate register`);
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

__all__ = ["MODEL_DIR", "RECORD_FILE", "SENT_FILE", "Tls", "link_command", "register", "run", "site_command",
           "site_failure"]

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


def link_command(port: int, state: str | Path, host: str = "127.0.0.1", tls: Tls | None = None,
                 authenticate: bool = False) -> list[str]:
    """The SuperLink of a federation, its state (runs, nodes, registered site keys) in
    STATE/superlink.db. `authenticate` (over TLS only): only SuperNodes whose public key
    was registered (`register`) may join, each proving it holds the private key."""
    Path(state).mkdir(parents=True, exist_ok=True)
    command = [_executable("flower-superlink"), "--host", host, "--port", str(port), "--database",
               str(Path(state).resolve() / "superlink.db"), "--disable-runtime-dependency-installation"]
    if tls is None:
        return [*command, "--insecure"]
    return [*command, "--ssl-ca-certfile", _readable(tls.ca, "TLS CA certificate"),
            "--ssl-certfile", _readable(tls.cert, "TLS certificate"), "--ssl-keyfile", _readable(tls.key, "TLS key"),
            *(["--enable-supernode-auth"] if authenticate else [])]


KEY_ADVICE = "an EC key in OpenSSH format, e.g. from ssh-keygen -t ecdsa -b 384 -N '' -f site-key"


def _site_key(path: str, public: bool) -> str:
    """`path`, checked to hold a site's EC key in OpenSSH format (the private key a site
    signs with, or the public key the coordinator registers): one line if it does not."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    what = "public" if public else "private"
    data = Path(_readable(path, f"site {what} key")).read_bytes()
    try:
        key = load_ssh_public_key(data) if public else load_ssh_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        raise InputError(f"{path}: not a usable site {what} key; expected {KEY_ADVICE} (no passphrase; the "
                         f"{'.pub file' if public else 'file without .pub'})")
    return str(Path(path).resolve())


def site_command(superlink: str, records: str | Path, out: str | Path, port: int, config: str = "",
                 tls: Tls | None = None, auth_key: str = "") -> list[str]:
    """A site's SuperNode: its records, its config file (empty: the shipped one) and the
    folder of its ledger, as Flower node config; with `auth_key`, the private key it proves
    itself with to a SuperLink that admits registered sites only."""
    from ..io.examples import record_spec

    record_spec(records)  # one line now if the folder is not an ingest output
    node = {"records": str(Path(records).resolve()), "config": str(Path(config).resolve()) if config else "",
            "out": str(Path(out).resolve())}
    command = [_executable("flower-supernode"), "--superlink", superlink, "--port", str(port), "--node-config",
               " ".join(f"{k}={json.dumps(v)}" for k, v in node.items())]
    if auth_key:
        command += ["--auth-supernode-private-key", _site_key(auth_key, public=False)]
    if tls is None:
        return [*command, "--insecure"]
    return [*command, "--root-certificates", _readable(tls.ca, "TLS CA certificate")]


# Flower's reasons a SuperLink refused a SuperNode (exit code 305), by its error code.
_REFUSED = {"2001": "admits registered sites only; expected --auth-key with a private key whose public key the "
                    "coordinator registered (medseq federate register)",
            "2004": "refused this site's key (--auth-key): its public key is not registered there; expected "
                    "`medseq federate register --public-key KEY.pub` at the coordinator first"}


def site_failure(log: str, superlink: str) -> str | None:
    """The one line for a SuperNode that the SuperLink refused, from its log; None for any
    other end."""
    for code, reason in _REFUSED.items():
        if f"[code: {code}]" in log:
            return f"the SuperLink at {superlink} {reason}"
    return None


def _flwr_home(folder: Path, superlink: str, tls: Tls | None) -> Path:
    """A FLWR_HOME whose one connection (CONNECTION) is the SuperLink's Control API."""
    import tomli_w

    connection: dict[str, object] = {"address": superlink}
    if tls is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = _readable(tls.ca, "TLS CA certificate")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION,
                                                                     CONNECTION: connection}}))
    return folder


def register(superlink: str, public_key: str, tls: Tls | None) -> int:
    """Registers a site's public key (OpenSSH EC) at the SuperLink, through its Control API:
    a SuperNode holding the private key may then join a federation that authenticates its
    sites. Returns the node ID Flower gives it; FederationError in one line if refused."""
    import tempfile

    from .records import FederationError

    key = _site_key(public_key, public=True)
    reachable(superlink, tls)
    with tempfile.TemporaryDirectory(prefix="medseq-flwr-") as home:
        done = subprocess.run([_executable("flwr"), "supernode", "register", key, CONNECTION, "--format", "json"],
                              env={**environment(), "FLWR_HOME": str(_flwr_home(Path(home), superlink, tls))},
                              capture_output=True, text=True, timeout=120)
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = {}
    if not answer.get("success"):
        said = str(answer.get("error-message") or done.stderr or done.stdout).strip().splitlines()
        raise FederationError(f"the SuperLink at {superlink} did not register {public_key}: "
                              f"{said[-1] if said else 'no answer'}")
    return int(answer["node-id"])


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
    home = _flwr_home(work / "home", superlink, tls)
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
