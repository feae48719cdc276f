"""A DICOMweb input against a real Orthanc (tests/orthanc_server.py): the same records
as the folder, dead letters, credentials, faults on the way, a killed archive, and
incremental reruns."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import yaml
from orthanc_server import PASSWORD, USER, FaultyProxy, Orthanc

from helpers import IN_PROCESS, KEY, SAMPLES, convert
from medseq.components.ingest.dicomweb import MANIFEST_FILE
from medseq.pipeline.errors import ArchiveError

pytestmark = pytest.mark.slow
CINE = SAMPLES / "cine_ef"
# Real files in the transfer syntaxes an archive stores: the bytes must come back as stored.
PYDICOM_SYNTAXES = ("MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jls_lossy_line.dcm", "JPGExtended.dcm",
                    "JPEG-lossy.dcm", "ExplVR_BigEnd.dcm", "image_dfl.dcm", "SC_rgb_rle_2frame.dcm")


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("MEDSEQ_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDSEQ_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.delenv("MEDSEQ_DICOMWEB_TOKEN", raising=False)


def sample_files(folder: Path = CINE / "dicom") -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def copy_tree(files: list[Path], root: Path, into: Path) -> Path:
    for path in files:
        target = into / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return into


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """One Orthanc holding the cine samples (and pydicom's files in other syntaxes);
    with the folder of the files it took, for the reference convert."""
    root = tmp_path_factory.mktemp("orthanc")
    server = Orthanc(root / "server")
    try:  # stopped by its PID however the set-up or the tests end
        taken = server.upload(sample_files())
        # One file per SOP Instance UID: an archive keeps the first of several copies.
        extra = list({str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in reversed(
            [Path(pydicom.data.get_testdata_file(name)) for name in PYDICOM_SYNTAXES])}.values())
        syntaxes = server.upload(extra)
        assert len(syntaxes) >= 5
        folder = copy_tree(taken, CINE / "dicom", root / "taken")
        copy_tree(syntaxes, syntaxes[0].parent, folder / "syntaxes")
        yield server, folder, {hashlib.sha256(p.read_bytes()).hexdigest() for p in taken + syntaxes}
    finally:
        server.stop()


def web_config(config, cache: Path, **dicomweb):
    ingest = config.ingest
    settings = dataclasses.replace(ingest.dicomweb, cache_dir=str(cache), **dicomweb)
    return dataclasses.replace(config, ingest=dataclasses.replace(ingest, dicomweb=settings))


def outputs(out: Path) -> dict[str, bytes]:
    """Every file of an output folder by its path (the lock and staging excepted)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".medseq")}


def records(out: Path) -> dict[str, bytes]:
    return {k: v for k, v in outputs(out).items() if k.endswith(".tfrecord.gz")}


def test_dicomweb_gives_the_folder_records_and_the_archive_bytes(archive, config, tmp_path, credentials):
    server, folder, stored = archive
    reference = convert(config.on_input(str(folder), config.labels), tmp_path / "folder", beam_args=())
    web = web_config(config, tmp_path / "cache").on_input(server.url, config.labels)
    got = convert(web, tmp_path / "web", beam_args=())
    assert got.records == reference.records and sum(got.records.values()) > 20
    assert records(tmp_path / "web") == records(tmp_path / "folder")
    assert (tmp_path / "web" / "qc.json").read_bytes() == (tmp_path / "folder" / "qc.json").read_bytes()
    # Every stored instance came back byte for byte, in every transfer syntax: no transcoding.
    cached = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "cache").rglob("IM*")}
    assert cached == stored
    assert got.fetch["fetched"] == got.fetch["listed"] > 36 and got.fetch["failed"] == 0
    manifest = json.loads((tmp_path / "web" / MANIFEST_FILE).read_text())
    assert len(manifest["series"]) == got.fetch["listed"]
    # Fetched on Beam (DoFns) instead of threads: the same output.
    on_beam = convert(web_config(config, tmp_path / "cache-beam").on_input(server.url, config.labels),
                      tmp_path / "beam", beam_args=IN_PROCESS)
    assert on_beam.fetch["fetched"] == got.fetch["fetched"]
    assert outputs(tmp_path / "beam") == outputs(tmp_path / "web")
    # A rerun with nothing new fetches nothing, and writes the same bytes.
    before = outputs(tmp_path / "web")
    again = convert(web, tmp_path / "web", beam_args=())
    assert again.fetch["fetched"] == 0 and again.fetch["unchanged"] == got.fetch["listed"]
    assert outputs(tmp_path / "web") == before


def test_a_rerun_fetches_only_new_series_and_equals_a_run_from_scratch(config, tmp_path, credentials):
    server = Orthanc(tmp_path / "server")
    try:
        patients = sorted(p for p in (CINE / "dicom").iterdir() if p.is_dir())
        first = server.upload([f for p in patients[: len(patients) // 2] for f in sample_files(p)])
        web = web_config(config, tmp_path / "cache").on_input(server.url, config.labels)
        one = convert(web, tmp_path / "web", beam_args=())
        second = server.upload([f for p in patients[len(patients) // 2:] for f in sample_files(p)])
        assert first and second
        two = convert(web, tmp_path / "web", beam_args=())
        assert two.fetch["unchanged"] == one.fetch["listed"]
        assert two.fetch["fetched"] == two.fetch["listed"] - one.fetch["listed"] > 0
        scratch = convert(web_config(config, tmp_path / "cache2").on_input(server.url, config.labels),
                          tmp_path / "scratch", beam_args=())
        assert scratch.fetch["fetched"] == two.fetch["listed"]
        assert outputs(tmp_path / "web") == outputs(tmp_path / "scratch")
    finally:
        server.stop()


def test_a_series_deleted_after_the_search_is_a_dead_letter(config, tmp_path, credentials):
    server = Orthanc(tmp_path / "server")
    proxy = FaultyProxy(server.port)
    try:
        taken = server.upload(sample_files(sorted((CINE / "dicom").iterdir())[0]))
        series = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in taken})
        # The archive loses one series between QIDO-RS and WADO-RS.
        proxy.before[f"/series/{series[0]}/instances"] = lambda: server.delete_series(series[0])
        web = web_config(config, tmp_path / "cache").on_input(proxy.url, config.labels)
        got = convert(web, tmp_path / "web", beam_args=())
        rows = [json.loads(line) for line in (tmp_path / "web" / "rejected.jsonl").read_text().splitlines()]
        failed = [r for r in rows if r["reason"] in ("fetch_failed", "incomplete_fetch")]
        assert len(failed) == 1 and got.fetch["failed"] == 1 and got.fetch["fetched"] == len(series) - 1
        assert "HTTP 404" in failed[0]["message"] or failed[0]["reason"] == "incomplete_fetch"
        assert series[0] not in json.dumps(rows)
        assert got.qc["rejected"][failed[0]["reason"]] == 1
    finally:
        proxy.close()
        server.stop()


def test_wildcard_and_list_filters_select_studies(archive, config, tmp_path, credentials):
    server, folder, _ = archive
    accessions: dict[str, set[str]] = {}
    for path in sample_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        accessions.setdefault(str(ds.get("AccessionNumber", "")), set()).add(str(ds.SeriesInstanceUID))
    prefix = sorted(a for a in accessions if a)[0][:2]
    wanted = {s for a, series in accessions.items() if a.startswith(prefix) for s in series}
    web = web_config(config, tmp_path / "cache", filters={"AccessionNumber": f"{prefix}*"})
    got = convert(web.on_input(server.url, config.labels), tmp_path / "web", beam_args=())
    assert 0 < got.fetch["listed"] == len(wanted) < sum(len(s) for s in accessions.values())
    # A CSV of accession numbers: those studies alone.
    chosen = sorted(a for a in accessions if a)[:3]
    (tmp_path / "studies.csv").write_text("accession_number\n" + "".join(f"{a}\n" for a in chosen))
    web = web_config(config, tmp_path / "cache2", studies_csv=str(tmp_path / "studies.csv"))
    got = convert(web.on_input(server.url, config.labels), tmp_path / "web2", beam_args=())
    assert got.fetch["listed"] == sum(len(accessions[a]) for a in chosen)


def test_wrong_credentials_end_in_one_line_and_write_nothing(archive, tmp_path):
    server, _, _ = archive
    env = {**os.environ, "MEDSEQ_HASH_KEY": KEY.decode(), "MEDSEQ_DICOMWEB_USER": USER,
           "MEDSEQ_DICOMWEB_PASSWORD": "wrong", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "medseq.pipeline.cli", "convert", "--input", server.url,
                             "--labels", str(CINE / "labels.csv"), "--out", str(out)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused the credentials (HTTP 401)" in lines[0], result.stderr
    assert "wrong" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_plain_http_archive_off_this_host_is_refused(config, tmp_path, credentials):
    web = web_config(config, tmp_path / "cache").on_input("http://pacs.example.org/dicom-web", config.labels)
    with pytest.raises(Exception, match="not a loopback address"):
        convert(web, tmp_path / "out", beam_args=())


def test_faults_on_the_way_are_retried_to_the_same_output(archive, config, tmp_path, credentials):
    server, _, _ = archive
    web = web_config(config, tmp_path / "cache-direct").on_input(server.url, config.labels)
    direct = convert(web, tmp_path / "direct", beam_args=())
    proxy = FaultyProxy(server.port)
    try:
        wado = r"/series/[0-9.]+$"  # a series' retrieve, not its instances' search
        proxy.faults += [
            (r"/studies\?", ("status", 503, 1)),  # the first search: busy, come back in a second
            (r"/series\?", ("status", 429, None)),
            (r"/instances\?", ("status", 502, None)),
            (wado, ("stall", 3.0)),  # longer than read_timeout_s
            (wado, ("cut", 0.5)),  # the connection dropped mid-series
            (wado, ("status", 500, None)),
        ]
        settings = {"read_timeout_s": 1.0, "backoff_s": 0.05, "retries": 4}
        started = time.monotonic()
        got = convert(web_config(config, tmp_path / "cache", **settings).on_input(proxy.url, config.labels),
                      tmp_path / "proxied", beam_args=())
        assert not proxy.faults  # every fault was served
        assert got.fetch["retried"] >= 6 and got.fetch["failed"] == 0
        assert time.monotonic() - started >= 1.0  # Retry-After was honoured
        assert records(tmp_path / "proxied") == records(tmp_path / "direct")
        assert (tmp_path / "proxied" / "qc.json").read_bytes() == (tmp_path / "direct" / "qc.json").read_bytes()
        assert direct.records == got.records
    finally:
        proxy.close()


def test_archive_killed_mid_fetch_then_rerun_gives_the_same_output(config, tmp_path):
    server = Orthanc(tmp_path / "server")
    proxy = FaultyProxy(server.port)
    proxy.delay = 0.15  # each request: a slow hospital link, so the kill lands mid-fetch
    try:
        per_series: dict[str, int] = {}
        for path in server.upload(sample_files()):
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
            per_series[uid] = per_series.get(uid, 0) + 1
        cache = tmp_path / "cache"
        settings = {"input": proxy.url, "labels": str(CINE / "labels.csv"),
                    "ingest": {"dicomweb": {"concurrency": 1, "retries": 2, "backoff_s": 0.05,
                                            "cache_dir": str(cache)}}}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(settings))
        env = {**os.environ, "MEDSEQ_HASH_KEY": KEY.decode(), "MEDSEQ_DICOMWEB_USER": USER,
               "MEDSEQ_DICOMWEB_PASSWORD": PASSWORD}
        command = [sys.executable, "-m", "medseq.pipeline.cli", "convert", "--config", str(tmp_path / "config.yaml"),
                   "--input", proxy.url, "--labels", str(CINE / "labels.csv"), "--out", str(tmp_path / "web")]
        job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(cache.glob("*/series/*"))) < 3:
            time.sleep(0.01)
        server.stop(signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)
        assert job.returncode == 1 and "stopped answering" in stderr and "Traceback" not in stderr, stderr
        assert not (tmp_path / "web" / "qc.json").exists()
        kept = list(cache.glob("*/series/*"))
        assert 3 <= len(kept) < 40 and not list(cache.glob("*/.medseq-staging-*"))
        # Every series in the cache is whole: as many files as the archive holds of it.
        for folder in kept:
            uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in folder.iterdir()}
            assert len(uids) == 1 and len(list(folder.iterdir())) == per_series[uids.pop()]
        server.start()
        proxy.delay = 0.0
        rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert f"{len(kept)} unchanged" in rerun.stdout
        scratch = web_config(config, tmp_path / "cache2").on_input(server.url, config.labels)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEDSEQ_DICOMWEB_USER", USER)
            mp.setenv("MEDSEQ_DICOMWEB_PASSWORD", PASSWORD)
            convert(scratch, tmp_path / "scratch", beam_args=())
        assert outputs(tmp_path / "web") == outputs(tmp_path / "scratch")
    finally:
        proxy.close()
        server.stop()


def test_no_identifier_from_the_search_reaches_output_or_console(archive, tmp_path):
    server, folder, _ = archive
    secrets: set[str] = set()
    for path in sample_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber",
                        "InstitutionName"):
            if ds.get(keyword):
                secrets.add(str(ds.get(keyword)))
    env = {**os.environ, "MEDSEQ_HASH_KEY": KEY.decode(), "MEDSEQ_DICOMWEB_USER": USER,
           "MEDSEQ_DICOMWEB_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "medseq.pipeline.cli", "convert", "--input", server.url,
                             "--labels", str(CINE / "labels.csv"), "--out", str(tmp_path / "out"), "-v"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "series listed" in result.stdout
    printed = result.stdout + result.stderr
    hits = [s for s in secrets if s in printed]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [s for s in secrets if s.encode() in data]
    assert len(secrets) > 50 and not hits, hits[:3]


def test_archive_gone_error_is_one_line(config, tmp_path, credentials):
    port_of_nothing = FaultyProxy(1)  # a proxy to a closed port: every request fails to connect upstream
    port_of_nothing.close()
    web = web_config(config, tmp_path / "cache", retries=1, backoff_s=0.01).on_input(
        f"http://127.0.0.1:{port_of_nothing.port}/dicom-web", config.labels)
    with pytest.raises(ArchiveError, match="connection failed"):
        convert(web, tmp_path / "out", beam_args=())
    assert not (tmp_path / "out").exists()


def test_medseq_run_takes_a_dicomweb_input_and_asks_the_archive_again(archive, tmp_path, credentials, capsys,
                                                                        monkeypatch):
    from medseq.pipeline import cli

    server, _, _ = archive
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = tmp_path / "config.yaml"
    settings = {"concurrency": 3, "filters": {"ModalitiesInStudy": "MR"}}
    config.write_text(yaml.safe_dump({"input": server.url, "labels": str(CINE / "labels.csv"),
                                      "ingest": {"dicomweb": settings}}))
    command = ["run", "--config", str(config), "--out", str(tmp_path / "run"), "--only", "ingest"]
    assert cli.main(command) == 0
    first = capsys.readouterr().out
    assert "series listed" in first and (tmp_path / "run" / "ingest" / "qc.json").exists()
    assert cli.main(command) == 0  # not reused by address: the archive is asked again, nothing is fetched
    again = capsys.readouterr().out
    assert " 0 fetched" in again and "reused" not in again.split("[1/5] ingest")[-1].splitlines()[0]
    recorded = (tmp_path / "run" / "run.json").read_text()
    assert PASSWORD not in recorded and "dicomweb:http" in recorded  # the address, never the credentials


def test_run_if_new_starts_only_when_the_archive_lists_a_series_the_last_ingest_lacks(archive, tmp_path,
                                                                                       credentials, capsys,
                                                                                       monkeypatch):
    """`medseq run --if-new` as a schedule's new-data trigger: after a run, the archive is
    asked which series it lists (nothing fetched) and no run starts while the last ingest
    holds them all; a series that arrives starts one, which fetches only it. The KFP
    pipeline's input fingerprint (ingest's cache key there) changes with it too."""
    from pydicom.uid import generate_uid

    from medseq.pipeline import cli, kfp_steps

    server, _, _ = archive
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"input": server.url, "labels": str(CINE / "labels.csv"),
                                      "ingest": {"dicomweb": {"filters": {"ModalitiesInStudy": "MR"}}}}))
    command = ["run", "--config", str(config), "--out", str(tmp_path / "run"), "--only", "ingest", "--if-new"]
    assert cli.main(command) == 0
    assert "series listed" in capsys.readouterr().out  # no run before: it starts
    assert cli.main(command) == 0
    quiet = capsys.readouterr().out
    assert quiet.startswith("run: nothing new: the DICOMweb input lists") and "[1/5]" not in quiet
    assert quiet.count("\n") == 1 and server.url not in quiet
    monkeypatch.setenv("MEDSEQ_HASH_KEY", KEY.decode())  # a KFP step's key: a secret in its environment
    listed = kfp_steps.input_fingerprint(config.read_text())
    assert kfp_steps.input_fingerprint(config.read_text()) == listed  # KFP reuses ingest: nothing arrived
    taken = next(p for p in sample_files() if p.read_bytes()[128:132] == b"DICM")
    arrived = pydicom.dcmread(taken)  # a new series of an existing MR study
    arrived.SeriesInstanceUID, arrived.SOPInstanceUID = generate_uid(), generate_uid()
    arrived.file_meta.MediaStorageSOPInstanceUID = arrived.SOPInstanceUID
    arrived.save_as(tmp_path / "arrived.dcm")
    assert server.upload([tmp_path / "arrived.dcm"])
    assert kfp_steps.input_fingerprint(config.read_text()) != listed  # KFP runs ingest again
    assert cli.main(command) == 0
    assert ", 1 fetched" in capsys.readouterr().out
