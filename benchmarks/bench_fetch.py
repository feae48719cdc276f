"""DICOMweb fetch throughput, side by side in one run: medseq's fetch against a plain
`dicomweb-client` loop, both on the same Orthanc, at the same concurrency.

    python benchmarks/bench_fetch.py [--concurrency 4] [--rounds 3] [--ct-series 6] [--ct-slices 80]

Needs Debian's `orthanc` and `orthanc-dicomweb` (started here on a free loopback port,
as the tests start it) and `pip install dicomweb-client`. Two data sets, each uploaded
to its own Orthanc:

- `samples`: the committed data_samples (small 48-64 px cine MR and CT, ~960 files);
- `ct full size`: CT series of 512 x 512 int16 slices, uncompressed (0.5 MB a file).

Callers, each from an empty folder, the same series listed by QIDO-RS:
- `medseq`: the fetch of `medseq convert` (dicomweb/fetch.py): QIDO-RS per series for
  its instances, WADO-RS per series with `transfer-syntax=*`, the multipart response
  streamed to one file per instance, `concurrency` threads;
- `dicomweb-client`: `DICOMwebClient.retrieve_series(..., media_types=(("application/dicom",
  "*"),))` per series over a pool of `concurrency` threads, each instance then written
  with `dcmwrite` (what a site's export script does); QIDO-RS for the series list only.

Rounds alternate the callers. Prints instances/s and MB/s (MB of files written) and
medseq / dicomweb-client; writes benchmarks/results/bench_fetch.json. Goal: >= 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the Orthanc the tests start

from orthanc_server import PASSWORD, USER, Orthanc  # noqa: E402

from medseq.components.ingest.dicomweb.client import Service  # noqa: E402
from medseq.components.ingest.dicomweb.fetch import SeriesFetcher, fetch_in_process  # noqa: E402
from medseq.components.ingest.dicomweb.search import find_series  # noqa: E402
from medseq.pipeline.config import DicomwebConfig  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "bench_fetch.json"
KEY = b"bench-fetch-key-0123456789abcdef"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def full_size_ct(out: Path, series: int, slices: int) -> list[Path]:
    """`series` CT series of `slices` 512 x 512 int16 slices each (explicit VR little
    endian, 0.5 MB a file, as a scanner's archive holds them), from pydicom's CT_small."""
    import numpy as np
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    template = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    rng = np.random.default_rng(0)
    files = []
    for s in range(series):
        study, series_uid = generate_uid(), generate_uid()
        for k in range(slices):
            ds = template.copy()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PatientID, ds.InstanceNumber = f"BENCH{s}", k + 1
            ds.ImagePositionPatient = [-250.0, -250.0, -1.25 * k]
            ds.Rows = ds.Columns = 512
            ds.PixelData = rng.integers(-1000, 1500, (512, 512), dtype=np.int16).tobytes()
            path = out / f"s{s}" / f"{k:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def folder_size(folder: Path) -> tuple[int, int]:
    """Instance files written (a cache's digest files left out) and their bytes."""
    files = [p for p in folder.rglob("*") if p.is_file() and "digests" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


def medseq_fetch(url: str, into: Path, concurrency: int) -> None:
    config = DicomwebConfig(concurrency=concurrency)
    service = Service(url, config)
    refs = find_series(service, config)
    fetch_in_process(SeriesFetcher(service, KEY, into), refs, concurrency)


def client_fetch(url: str, into: Path, concurrency: int) -> None:
    import pydicom
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    def new_client() -> DICOMwebClient:  # one per thread: a requests Session is not thread-safe
        return DICOMwebClient(url, session=create_session_from_user_pass(USER, PASSWORD))

    client = new_client()
    series = client.search_for_series()
    pairs = [(s["0020000D"]["Value"][0], s["0020000E"]["Value"][0]) for s in series]

    def one(index_pair: tuple[int, tuple[str, str]]) -> None:
        index, (study, uid) = index_pair
        folder = into / f"s{index}"
        folder.mkdir(parents=True)
        local = new_client()
        for i, ds in enumerate(local.retrieve_series(study, uid, media_types=(("application/dicom", "*"),))):
            pydicom.dcmwrite(folder / f"{i}.dcm", ds)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, enumerate(pairs)))


def timed(fn, url: str, work: Path, concurrency: int) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    fn(url, work, concurrency)
    seconds = time.perf_counter() - started
    files, nbytes = folder_size(work)
    return {"seconds": seconds, "instances": files, "mb": nbytes / 1e6}


def measure(name: str, files: list[Path], root: Path, concurrency: int, rounds: int) -> dict[str, object]:
    server = Orthanc(root / f"orthanc-{name.replace(' ', '_')}")
    try:
        taken = server.upload(files)
        runs: dict[str, list[dict[str, float]]] = {"medseq": [], "dicomweb-client": []}
        for _ in range(rounds):
            for caller, fn in (("medseq", medseq_fetch), ("dicomweb-client", client_fetch)):
                runs[caller].append(timed(fn, server.url, root / "work", concurrency))
    finally:
        server.stop()
    best = {caller: min(rs, key=lambda r: r["seconds"]) for caller, rs in runs.items()}
    out: dict[str, object] = {"files_uploaded": len(taken)}
    for caller, r in best.items():
        out[caller] = {**r, "instances_per_s": r["instances"] / r["seconds"], "mb_per_s": r["mb"] / r["seconds"]}
    out["ratio"] = best["dicomweb-client"]["seconds"] / best["medseq"]["seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ct-series", type=int, default=6)
    parser.add_argument("--ct-slices", type=int, default=80)
    args = parser.parse_args()
    os.environ["MEDSEQ_DICOMWEB_USER"], os.environ["MEDSEQ_DICOMWEB_PASSWORD"] = USER, PASSWORD
    results: dict[str, object] = {"cpu": cpu_name(), "cores": os.cpu_count(), "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        root = Path(tmp)
        samples = sorted(p for p in (REPO / "data_samples").rglob("*") if p.is_file() and "dicom" in p.parts)
        ct = full_size_ct(root / "ct", args.ct_series, args.ct_slices)
        for name, files in (("samples", samples), ("ct full size", ct)):
            results[name] = measure(name, files, root, args.concurrency, args.rounds)
    print(f"{results['cpu']}, {results['cores']} cores, concurrency {args.concurrency}, best of {args.rounds}")
    print(f"{'data':14} {'caller':16} {'instances':>9} {'MB':>8} {'s':>7} {'inst/s':>8} {'MB/s':>7}")
    for name in ("samples", "ct full size"):
        data = results[name]
        assert isinstance(data, dict)
        for caller in ("medseq", "dicomweb-client"):
            r = data[caller]
            print(f"{name:14} {caller:16} {r['instances']:9d} {r['mb']:8.1f} {r['seconds']:7.2f} "
                  f"{r['instances_per_s']:8.0f} {r['mb_per_s']:7.1f}")
        print(f"{name:14} medseq / dicomweb-client: {data['ratio']:.2f}x")
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
