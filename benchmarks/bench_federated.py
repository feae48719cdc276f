"""Federated training against centralized training and each site alone, on the same
held-out patients, side by side in one run (issue 38).

    python benchmarks/bench_federated.py [--patients 300] [--rounds 10] [--local-epochs 1] [--seed 0]
        [--federated fedavg:keep fedavg:fresh fedavgm:keep]

Three synthetic sites of `medseq synth --task cine_ef`, non-IID: each keeps the series of
one vendor (SIEMENS, GE, Philips) and its own class balance (reduced EF kept for 60 %,
30 % and 10 % of those series), and converts them with its own hash key. Trained with
the same model and the same number of passes over the data (rounds x local epochs):

- `centralized`: `medseq train` on the union of the three sites' series;
- `site N alone`: `medseq train` on one site's records;
- `federated`: `medseq federate run` over the three sites, each a SuperNode on loopback
  (components/federate/local.py), once per `--federated AGGREGATOR:SITE_OPTIMIZER`
  variant (federate.aggregator, federate.site_optimizer), on the same SuperNodes.

Every model is scored on one held-out set (another 200 patients of every vendor, never
trained on): AUC with a bootstrap 95 % interval. Prints the table and the federation's
time per round and bytes sent per site per round; writes JSON
(benchmarks/results/bench_federated.json). Goals: federated within 0.02 AUC of
centralized and above every site alone. Needs `pip install -e '.[federated]'`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import yaml
from pydicom.errors import InvalidDicomError

from medseq.components import federate, ingest, synth, train
from medseq.components.federate.local import LocalFederation
from medseq.components.model.intervals import bootstrap_intervals
from medseq.components.model.metrics import auc
from medseq.pipeline.config import PipelineConfig, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import predictions  # the held-out split through the served signature
from bench_serving import cpu_name

RESULTS = Path(__file__).resolve().parent / "results" / "bench_federated.json"
SITES = {"site 1": ("SIEMENS", 0.6), "site 2": ("GE MEDICAL SYSTEMS", 0.3), "site 3": ("Philips Medical Systems", 0.1)}
BENCH = {"preprocess": {"height": 48, "width": 48, "frames": 12},
         "train": {"conv_filters": [16, 32], "lstm_units": 32, "batch_size": 4}}
COORDINATOR_KEY = "bench-coordinator-key-0123456789"


def _vendors(dicom: Path) -> dict[str, str]:
    """Series UID -> manufacturer, from the files' headers."""
    found: dict[str, str] = {}
    for path in dicom.rglob("*"):
        if path.is_file():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID",
                                                                                   "Manufacturer"])
            except (InvalidDicomError, OSError, ValueError):  # the junk synth plants on purpose
                continue
            if "SeriesInstanceUID" in ds:
                found[str(ds.SeriesInstanceUID)] = str(ds.get("Manufacturer", ""))
    return found


def site_data(root: Path, patients: int, seed: int, vendor: str, reduced_share: float) -> Path:
    """A site's DICOM and a labels.csv of its vendor's series, reduced EF kept for
    `reduced_share` of them (the others are unlabeled: not converted)."""
    synth.run("cine_ef", patients, seed, root, small=True)
    vendors = _vendors(root / "dicom")
    rows = list(csv.reader((root / "labels.csv").open()))
    rng = np.random.default_rng(seed)
    kept = [r for r in rows[1:] if vendors.get(r[0]) == vendor and (r[1] != "reduced_ef" or
                                                                      rng.random() < reduced_share / 0.5)]
    with (root / "site_labels.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([rows[0], *kept])
    return root / "site_labels.csv"


def convert(config: PipelineConfig, dicom: Path, labels: Path, out: Path, key: bytes) -> Path:
    ingest.run(config, ingest.IngestInputs(str(dicom), str(labels), key), out)
    return out


def scored(name: str, model_dir: str, held_out: Path, **extra: object) -> dict[str, object]:
    probs, labels = predictions(model_dir, held_out, "eval")
    low, high = bootstrap_intervals(probs, labels, seed=0, samples=2000,
                                    metrics=lambda p, y: {"auc": auc(p, y)})["auc"]
    return {"model": name, "auc": auc(probs, labels), "ci95": [low, high], "series": int(len(labels)), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=300, help="synthetic patients per site (all vendors)")
    parser.add_argument("--held-out", type=int, default=200, help="held-out patients")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--federated", nargs="+", default=["fedavg:fresh"], metavar="AGGREGATOR:SITE_OPTIMIZER",
                        help="federated variants, each one run (e.g. fedavg:keep fedavg:fresh fedavgm:keep)")
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args()
    os.environ.setdefault("MEDSEQ_HASH_KEY", COORDINATOR_KEY)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = {**BENCH, "federate": {"rounds": args.rounds, "local_epochs": args.local_epochs, "min_sites": 3,
                                          "round_timeout_s": 600}}
        (root / "config.yaml").write_text(yaml.safe_dump(settings))
        config = load_config(root / "config.yaml")
        epochs = args.rounds * args.local_epochs
        trained = dataclasses.replace(config.train, epochs=epochs)
        sites, union = {}, root / "union"
        (union / "dicom").mkdir(parents=True)
        union_rows: list[list[str]] = []
        for i, (name, (vendor, share)) in enumerate(SITES.items()):
            data = root / f"site{i + 1}"
            labels = site_data(data, args.patients, args.seed * 100 + i + 1, vendor, share)
            sites[name] = (convert(config, data / "dicom", labels, data / "records", f"{name}-own-key-0123".encode()),
                           root / "config.yaml")
            shutil.copytree(data / "dicom", union / "dicom" / f"site{i + 1}", copy_function=os.link)
            union_rows += list(csv.reader(labels.open()))[1:]
        with (union / "labels.csv").open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([["series_instance_uid", "label"], *union_rows])
        union_records = convert(config, union / "dicom", union / "labels.csv", union / "records",
                                b"union-key-0123456789")
        held = dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, split=dataclasses.replace(
            config.ingest.split, train=0.1, eval=0.8, test=0.1)))
        synth.run("cine_ef", args.held_out, args.seed * 100 + 99, root / "held_out", small=True)
        held_out = convert(held, root / "held_out" / "dicom", root / "held_out" / "labels.csv",
                           root / "held_out" / "records", b"held-out-key-0123456789")

        start = time.perf_counter()
        model = train.train(union_records, root / "central", trained).model_dir
        rows.append(scored("centralized (union of the sites)", model, held_out,
                           train_seconds=round(time.perf_counter() - start)))
        for name, (records, _) in sites.items():
            model = train.train(records, root / name.replace(" ", "_"), trained).model_dir
            rows.append(scored(f"{name} alone ({SITES[name][0].split()[0]}, reduced EF {SITES[name][1]:.0%})",
                               model, held_out))
        with LocalFederation(root / "federation", sites, {"MEDSEQ_HASH_KEY": COORDINATOR_KEY}) as fed:
            for variant in args.federated:
                aggregator, site_optimizer = variant.split(":")
                out = root / f"federated-{aggregator}-{site_optimizer}"
                variant_config = dataclasses.replace(config, federate=dataclasses.replace(
                    config.federate, aggregator=aggregator, site_optimizer=site_optimizer))
                start = time.perf_counter()
                model_dir = federate.run(variant_config, fed.superlink, out)
                seconds = time.perf_counter() - start
                record = json.loads((out / federate.RECORD_FILE).read_text())
                per_round = np.diff([0.0] + [r["ended_s"] for r in record["rounds"]])
                rows.append(scored(f"federated ({aggregator}, site optimizer {site_optimizer}, {args.rounds} rounds "
                                   f"x {args.local_epochs} local epochs)", str(model_dir), held_out,
                                   run_seconds=round(seconds),
                                   seconds_per_round=round(float(np.median(per_round[1:] if len(per_round) > 1
                                                                             else per_round)), 1),
                                   bytes_per_site_per_round=int(np.median([r["bytes_sent_per_site"]
                                                                           for r in record["rounds"]]))))
    print(f"bench_federated ({cpu_name()}): AUC on {rows[0]['series']} held-out series, bootstrap 95 % interval; "
          f"{epochs} passes over the data each")
    for row in rows:
        ci = row["ci95"]
        extra = "".join(f"  {k} {row[k]}" for k in ("train_seconds", "run_seconds", "seconds_per_round",
                                                     "bytes_per_site_per_round") if k in row)
        print(f"  {row['model']:72} AUC {row['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]{extra}")
    central, alone = rows[0]["auc"], [r["auc"] for r in rows[1:1 + len(SITES)]]
    for row in rows[1 + len(SITES):]:
        print(f"  {row['model']}: federated - centralized {row['auc'] - central:+.3f} (goal >= -0.02); above every "
              f"site alone: {all(row['auc'] > a for a in alone)}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "cpu": cpu_name(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
