"""Federated training through Flower, as real processes on loopback: a SuperLink (`medseq
federate link`) and five SuperNodes (`medseq federate site`), each site on its own
records made by its own ingest with its own hash key. One site preprocessed differently
and is left out in one line; one is killed (SIGKILL) during the first round, which
completes without it, and comes back; every message each site sent is inspected; the
federated model goes through `medseq evaluate` on held-out patients and is blessed."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import yaml

from helpers import auc_gate, convert, free_ports, medseq, one_line
from medseq.components import synth
from medseq.components.federate import RECORD_FILE
from medseq.components.federate.local import LocalFederation
from medseq.pipeline import features as F
from medseq.pipeline.config import load_config

pytest.importorskip("flwr", reason="federated training needs Flower: pip install -e '.[federated]'")
pytestmark = pytest.mark.slow

FEDERATION = {"preprocess": {"height": 32, "width": 32, "frames": 8},
              "train": {"conv_filters": [8, 16], "lstm_units": 16, "batch_size": 4},
              "federate": {"rounds": 3, "local_epochs": 3, "min_sites": 3, "round_timeout_s": 120}}
SITES = {"a": 11, "b": 12, "c": 13, "d": 14, "e": 15}  # synth seeds; d preprocesses with 6 frames
COORDINATOR_KEY = "coordinator-key-0123456789"


def _sent(fed: LocalFederation, name: str) -> list[dict]:
    path = fed.ledger(name)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(1.0)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    (root / "config.yaml").write_text(yaml.safe_dump(FEDERATION))
    (root / "d.yaml").write_text(yaml.safe_dump({**FEDERATION, "preprocess": {**FEDERATION["preprocess"],
                                                                             "frames": 6}}))
    for name, seed in SITES.items():  # each site's own DICOM, ingest and hash key
        synth.run("cine_ef", 50, seed, root / name / "data", small=True)
        site = load_config(root / ("d.yaml" if name == "d" else "config.yaml"))
        convert(site.on_input(str(root / name / "data" / "dicom"), str(root / name / "data" / "labels.csv")),
                root / name / "records", key=f"site-{name}-key-0123456789".encode())
    held_out = load_config(root / "config.yaml")  # another hospital's patients, never trained on
    held_out = dataclasses.replace(held_out, ingest=dataclasses.replace(
        held_out.ingest, split=dataclasses.replace(held_out.ingest.split, train=0.1, eval=0.8, test=0.1)))
    synth.run("cine_ef", 100, 99, root / "held_out" / "data", small=True)
    convert(held_out.on_input(str(root / "held_out" / "data" / "dicom"),
                              str(root / "held_out" / "data" / "labels.csv")), root / "held_out" / "records")
    sites = {name: (root / name / "records", root / ("d.yaml" if name == "d" else "config.yaml")) for name in SITES}
    env = {"MEDSEQ_HASH_KEY": COORDINATOR_KEY}
    with LocalFederation(root / "federation", sites, env) as fed:
        run = subprocess.Popen([sys.executable, "-m", "medseq.pipeline.cli", "federate", "run", "--superlink",
                                fed.superlink, "--out", str(root / "run"), "--config", str(root / "config.yaml")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        # Site e drops out once admitted, during the first round (SIGKILL: no goodbye), and
        # comes back (a new SuperNode on its records) once the first round is over.
        _wait_for(lambda: any(m["type"] == "query" for m in _sent(fed, "e")), 600, "site e was never asked")
        fed.stop_site("e", signal.SIGKILL)
        _wait_for(lambda: any(m["type"] == "train" for m in _sent(fed, "a")), 600, "no first round")
        fed.start_site("e")
        out, err = run.communicate(timeout=1500)
        yield root, fed, run.returncode, out, err


def test_the_sites_train_one_model_and_a_site_that_preprocessed_otherwise_is_left_out(federation):
    root, _, code, out, err = federation
    assert code == 0, (out + err)[-3000:] + (root / "run" / ".flower" / "run.log").read_text()[-3000:]
    record = json.loads((root / "run" / RECORD_FILE).read_text())
    assert len(record["left_out"]) == 1  # site d, in one line that says what differs
    line = next(x for x in out.splitlines() if "left out" in x)
    assert line.startswith("federate: site ") and line.endswith(
        "left out: preprocess.frames is 6, the federation's 8"), line
    assert len(record["rounds"]) == 3 and record["aggregator"] == "fedavg"
    # Site e died in round 1: the round completed with the three others; it came back.
    first = record["rounds"][0]
    assert len(first["sites"]) == 3 and first["bytes_sent_per_site"] > 0
    assert max(len(r["sites"]) for r in record["rounds"]) == 4
    # a, b, c and e under its new node; e's first node too when its description reached the
    # coordinator before the kill (its ledger line is written as the reply leaves the app)
    assert len(record["sites"]) in (4, 5)
    assert all(len(name) == 12 for name in record["sites"])  # keyed hashes


def test_the_federated_model_passes_the_gate_on_held_out_patients(federation, tmp_path):
    root, _, code, _, _ = federation
    assert code == 0
    gate = auc_gate(tmp_path / "gate.pbtxt", 0.7)
    result = medseq("evaluate", "--examples", str(root / "held_out" / "records"), "--model",
                    str(root / "run" / "model"), "--eval-config", gate, "--out", str(tmp_path / "eval"),
                    "--config", str(root / "config.yaml"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "eval" / F.BLESSED).exists(), result.stdout[-2000:]
    spec = json.loads((root / "run" / "model" / "assets.extra" / "medseq_spec.json").read_text())
    assert spec["training"]["federated"]["rounds"][0]["round"] == 1
    assert spec["training"]["domain"]["records"] > 0 and spec["training"]["domain"]["score"]["threshold"] > 0


def test_only_weights_and_aggregates_leave_a_site(federation):
    """Every message each site sent, as its ledger recorded it leaving: weights (the
    model's own shapes), counts and split-level metrics, the record contract and the
    sums that pool the domain reference; nothing of a patient, a series or a path."""
    root, fed, code, _, _ = federation
    assert code == 0
    shapes = None
    for name in SITES:
        sent = _sent(fed, name)
        assert sent, name
        text = json.dumps(sent)
        for path in (root / name / "data" / "dicom").rglob("*"):
            if path.is_file():
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID",
                                "SOPInstanceUID", "AccessionNumber", "InstitutionName"):
                    value = str(ds.get(keyword, "") or "")
                    assert not value or value not in text, (name, keyword)
        assert str(root) not in text  # no path of the site's
        for message in sent:
            assert message["type"] in ("query", "train", "evaluate") and message["error"] is None
            for record in message["content"].values():
                if "metrics" in record:
                    assert set(record["metrics"]) <= {"num-examples", "train_loss", "train_accuracy", "eval_loss",
                                                      "eval_accuracy"}
                if "config" in record:
                    assert set(record["config"]) <= {"contract", "model", "train_records", "eval_records", "domain",
                                                     "privacy"}
            content = message["content"]
            if message["type"] == "train":
                found = [tuple(a["shape"]) for a in content["arrays"]["arrays"].values()]
                shapes = shapes or found
                assert found == shapes  # the model's weights, the same shapes from every site
            elif "sums" in content:
                count, total, outer = (tuple(a["shape"]) for a in content["sums"]["arrays"].values())
                assert count == (1,) and outer == (total[0], total[0])
            elif "histogram" in content:
                assert [tuple(a["shape"]) for a in content["histogram"]["arrays"].values()] == [(2000,)]
            else:
                assert "arrays" not in json.dumps(content)
    assert shapes


def test_a_site_on_a_folder_that_is_not_an_ingest_output_fails_in_one_line(tmp_path):
    result = medseq("federate", "site", "--superlink", "127.0.0.1:9", "--records", str(tmp_path), "--out",
                    str(tmp_path / "out"))
    assert result.returncode != 0
    assert one_line(result) == (f"medseq federate: {tmp_path}: no qc.json; expected the output folder of "
                                "`medseq convert`")


def test_a_federation_off_loopback_without_tls_is_refused_in_one_line(tmp_path):
    result = medseq("federate", "link", "--host", "0.0.0.0", "--state", str(tmp_path / "link"))
    assert one_line(result) == ("medseq federate: federate link: 0.0.0.0 is not this machine's loopback; expected "
                                "TLS there (--tls-ca, --tls-cert and --tls-key)")
    result = medseq("federate", "site", "--superlink", "hospital.example:9092", "--records", str(tmp_path),
                    "--out", str(tmp_path / "out"))
    assert one_line(result) == ("medseq federate: federate site: hospital.example is not this machine's loopback; "
                                "expected TLS there (--tls-ca)")
    port = free_ports(1)[0]
    result = medseq("federate", "run", "--superlink", f"127.0.0.1:{port}", "--out", str(tmp_path / "run"))
    assert one_line(result) == (f"medseq federate: nothing answers at 127.0.0.1:{port}; expected a SuperLink "
                                "(medseq federate link)")
    assert not (tmp_path / "run").exists()  # nothing written


def _certificates(folder: Path) -> tuple[str, str, str, str]:
    """A CA, the SuperLink's certificate (127.0.0.1, localhost) and key signed by it, and
    another CA that signed nothing here: (ca, cert, key, other_ca) as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, signer, ca: bool):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def write(name: str, data: bytes) -> str:
        (folder / name).write_bytes(data)
        return str(folder / name)

    ca_key, key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    pem = serialization.Encoding.PEM
    return (write("ca.pem", certificate("medseq test CA", ca_key, "medseq test CA", ca_key, True).public_bytes(pem)),
            write("link.pem", certificate("127.0.0.1", key, "medseq test CA", ca_key, False).public_bytes(pem)),
            write("link.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())),
            write("other.pem", certificate("another CA", other_key, "another CA", other_key, True).public_bytes(pem)))


def _site_key(path: Path) -> str:
    """A site's key pair as ssh-keygen -t ecdsa -b 384 writes it: PATH (private) and PATH.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    Path(f"{path}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                  serialization.PublicFormat.OpenSSH))
    return str(path)


def test_tls_site_keys_and_differential_privacy_in_one_federation(federation, tmp_path):
    """`federate link --authenticate` over TLS: the sites whose public keys the coordinator
    registered join; a site with another key, or none, is refused in one line, and so is a
    file that is not a key; a coordinator that does not trust the SuperLink's certificate
    is refused in one line. The registered sites train with federate.dp: each clips its
    update to the norm its own config sets (the round's largest update norm is at most
    that, where the federation without DP sent larger ones), the coordinator adds noise and
    accounts the privacy spent; the epsilon in the record and the model's spec is
    dp-accounting's own for those releases. A budget the rounds would exceed is refused in
    one line before anything trains; a registered site whose config does not say the same
    privacy settings is left out in one line. (One federation for all of it: each
    SuperLink, its sites and a training run cost minutes of CI.)"""
    from dp_accounting import dp_event, rdp

    from medseq.components.federate import Tls

    root, _, code, _, _ = federation
    assert code == 0
    plain = json.loads((root / "run" / RECORD_FILE).read_text())
    clip = 0.05
    assert plain["differential_privacy"] is None and plain["rounds"][0]["largest_update_norm"] > 4 * clip
    ca, cert, key, other = _certificates(tmp_path)
    keys = {name: _site_key(tmp_path / f"{name}-key") for name in ("a", "b", "c", "e")}
    dp = {"noise_multiplier": 0.8, "clipping_norm": clip, "delta": 1e-5}
    federate = {"rounds": 2, "local_epochs": 1, "min_sites": 2, "round_timeout_s": 120}
    (tmp_path / "dp.yaml").write_text(yaml.safe_dump({**FEDERATION, "federate": {**federate, "dp": dp}}))
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump(
        {**FEDERATION, "federate": {**federate, "dp": {**dp, "max_epsilon": 1.0}}}))
    unauthenticated = medseq("federate", "link", "--state", str(tmp_path / "plain"), "--authenticate")
    assert one_line(unauthenticated) == ("medseq federate: federate link: --authenticate proves each site's key "
                                         "over TLS; expected --tls-ca, --tls-cert and --tls-key beside it")
    env = {"MEDSEQ_HASH_KEY": COORDINATOR_KEY}
    sites = {name: (root / name / "records", tmp_path / "dp.yaml") for name in ("a", "c")}
    sites["e"] = (root / "e" / "records", root / "config.yaml")  # registered, the same model, no DP
    with LocalFederation(tmp_path / "federation", sites, env, Tls(ca, cert, key),
                         keys={name: keys[name] for name in sites}) as fed:
        port = free_ports(1)[0]

        def site(*extra: str) -> subprocess.CompletedProcess:
            """A refused site's `medseq federate site`, in a session of its own: should it hang, it
            and its SuperNode are stopped by their process group, not left running."""
            command = [sys.executable, "-m", "medseq.pipeline.cli", "federate", "site", "--superlink", fed.superlink,
                       "--records", str(root / "b" / "records"), "--out", str(tmp_path / "b"), "--port", str(port),
                       "--tls-ca", ca, *extra]
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True) as process:
                try:
                    out, err = process.communicate(timeout=180)
                finally:
                    if process.poll() is None:
                        os.killpg(process.pid, signal.SIGKILL)
            return subprocess.CompletedProcess(command, process.returncode, out, err)

        assert one_line(site("--auth-key", keys["b"])) == (
            f"medseq federate: the SuperLink at {fed.superlink} refused this site's key (--auth-key): its public key "
            "is not registered there; expected `medseq federate register --public-key KEY.pub` at the coordinator "
            "first")
        assert one_line(site()) == (
            f"medseq federate: the SuperLink at {fed.superlink} admits registered sites only; expected --auth-key "
            "with a private key whose public key the coordinator registered (medseq federate register)")
        (tmp_path / "not-a-key").write_text("-----BEGIN NOTHING-----\n")
        assert one_line(site("--auth-key", str(tmp_path / "not-a-key"))).startswith(
            f"medseq federate: {tmp_path / 'not-a-key'}: not a usable site private key; expected an EC key in "
            "OpenSSH format")
        bad = medseq("federate", "register", "--superlink", fed.superlink, "--public-key", keys["b"], "--tls-ca", ca)
        assert one_line(bad).startswith(f"medseq federate: {keys['b']}: not a usable site public key")
        assert all(fed.processes[name].poll() is None for name in sites)  # the registered sites are connected
        env = {**os.environ, **env}

        def coordinator(config: Path, out: str, trusted: str) -> subprocess.CompletedProcess:
            return medseq("federate", "run", "--superlink", fed.superlink, "--out", str(tmp_path / out), "--config",
                          str(config), "--tls-ca", trusted, env=env, timeout=900)

        wrong = coordinator(tmp_path / "dp.yaml", "wrong", other)
        assert one_line(wrong) == (f"medseq federate: the SuperLink at {fed.superlink} presented a certificate "
                                   f"that --tls-ca {other} does not trust (TLS verification failed)")
        line = one_line(coordinator(tmp_path / "budget.yaml", "over", ca))
        assert line.startswith("medseq federate: federate.dp: 2 rounds at noise_multiplier 0.8 spend epsilon ") \
            and line.endswith("at delta 1e-05, above max_epsilon 1; expected fewer rounds or more noise"), line
        done = coordinator(tmp_path / "dp.yaml", "run", ca)
        assert done.returncode == 0, done.stderr[-3000:]
    left_out = [x for x in done.stdout.splitlines() if "left out:" in x]
    assert len(left_out) == 1 and left_out[0].endswith(
        "left out: federate.dp.clipping_norm is 1.0, the federation's 0.05"), left_out
    record = json.loads((tmp_path / "run" / RECORD_FILE).read_text())
    assert [len(r["sites"]) for r in record["rounds"]] == [2, 2] and all(r["released"] for r in record["rounds"])
    assert all(0 < r["largest_update_norm"] <= clip * (1 + 1e-4) for r in record["rounds"])
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(0.8), 2))
    privacy = record["differential_privacy"]
    assert privacy["releases"] == 2 and privacy["delta"] == 1e-5
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-5)
    spec = json.loads((tmp_path / "run" / "model" / "assets.extra" / "medseq_spec.json").read_text())
    assert spec["training"]["federated"]["differential_privacy"]["epsilon"] == privacy["epsilon"]


def test_a_site_keeps_its_optimizer_state_between_rounds_of_one_run(federation, tmp_path):
    """federate.site_optimizer: keep. A site's Adam state (its moments and step count) is
    saved at the site after a round and taken up by its next one, as centralized training
    carries it between epochs; the learning rate stays the round's own. A file of another
    model's state is not used."""
    import numpy as np

    from medseq.components.federate import site

    root, _, _, _, _ = federation
    records = root / "a" / "records"
    train = load_config(root / "config.yaml").train
    initial = site._trainer(records, train, 1).model.get_weights()
    state = tmp_path / "optimizer.npz"
    first, _ = site.local_train(records, train, initial, 1, 1, rounds=2, optimizer_file=state)
    with np.load(state) as saved:
        steps = int(saved["v0"])  # the step count, first of the carried variables
        moments = [saved[k] for k in saved.files[1:]]
    assert steps == -(-site.split_count(records, "train") // train.batch_size) > 0
    assert any(np.abs(m).max() > 0 for m in moments)
    site.local_train(records, train, first, 1, 2, rounds=2, optimizer_file=state)
    with np.load(state) as saved:
        assert int(saved["v0"]) == 2 * steps  # round 2 went on from round 1's state
    np.savez(state, v0=np.int64(7), v1=np.zeros(3))  # another model's state
    site.local_train(records, train, first, 1, 2, rounds=2, optimizer_file=state)
    with np.load(state) as saved:
        assert int(saved["v0"]) == steps and len(saved.files) == len(moments) + 1
