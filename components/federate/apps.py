"""The Flower apps of a federation (Flower's Message API): `server`, the ServerApp the
coordinator's SuperLink runs (coordinator.py), and `client`, the ClientApp each site's
SuperNode runs on its own records (site.py).

A site's SuperNode is started with its node config (`medseq federate site`): `records`
(its own ingest output), `config` (its own pipeline config file, or empty for the shipped
one) and `out` (a folder medseq writes: SENT_FILE, the ledger of every message the site
sent, written by the `ledger` mod from the message itself after the app returns it).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp import Grid, ServerApp

from ...pipeline.config import PipelineConfig, load_config
from ...pipeline.errors import MedseqError
from . import site
from .records import FAILED, SENT_FILE, UNIFORM_WEIGHT

SETTINGS = "settings"  # the run config key: JSON of {"config": the pipeline config as JSON, "out": folder}


def _site(context: Context) -> tuple[str, PipelineConfig, Path]:
    node = context.node_config
    return _node(str(node["records"]), str(node.get("config") or ""), str(node.get("out") or "."))


@functools.lru_cache(maxsize=4)
def _node(records: str, config: str, out: str) -> tuple[str, PipelineConfig, Path]:
    """A site's settings, read once per ClientApp process (Flower starts one per run)."""
    return records, load_config(config or None), Path(out)


def summary(content: RecordDict) -> dict[str, Any]:
    """What a message carries, as the ledger records it: every array's shape, dtype and
    bytes, every metric and every config value (each in full)."""
    out: dict[str, Any] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out[name] = {"arrays": {key: {"shape": list(a.shape), "dtype": a.dtype, "bytes": len(a.data)}
                                    for key, a in record.items()}}
        elif isinstance(record, MetricRecord):
            out[name] = {"metrics": dict(record)}
        elif isinstance(record, ConfigRecord):
            out[name] = {"config": dict(record)}
    return out


def ledger(msg: Message, context: Context, call_next: Any) -> Message:
    """A ClientApp mod: every reply the site sends, appended to OUT/sent.jsonl as it leaves."""
    reply: Message = call_next(msg, context)
    _, _, out = _site(context)
    out.mkdir(parents=True, exist_ok=True)
    entry = {"time": time.time(), "type": msg.metadata.message_type, "run": context.run_id,
             "error": reply.error.reason if reply.has_error() else None,
             "content": summary(reply.content) if reply.has_content() else {}}
    with (out / SENT_FILE).open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
    return reply


CLIPPING_NORM = "clipping_norm"  # the key Flower's DP strategies send the clipping norm under
REFUSED = 1  # an Error code: the site refuses the coordinator's request


def clipped(msg: Message, context: Context, call_next: Any) -> Message:
    """A ClientApp mod: under the site's own `federate.dp`, every training reply is clipped
    by Flower's `fixedclipping_mod` (the change from the weights received, to the site's
    clipping norm) before it leaves; a round that asks another norm, or none, is refused.
    The site decides, not the coordinator."""
    _, config, _ = _site(context)
    if msg.metadata.message_type != "train" or not config.federate.dp.on:
        return call_next(msg, context)
    own = config.federate.dp.clipping_norm
    asked = msg.content.config_records["config"].get(CLIPPING_NORM)
    if not isinstance(asked, int | float) or not np.isclose(float(asked), own):
        what = f"{float(asked):g}" if isinstance(asked, int | float) else "no clipping"
        return Message(Error(REFUSED, f"this site clips its updates to {own:g} (federate.dp.clipping_norm); the "
                                      f"round asked {what}"), reply_to=msg)
    return fixedclipping_mod(msg, context, call_next)


client = ClientApp(mods=[ledger, clipped])  # the ledger outermost: it records what leaves, clipped


def _weights(msg: Message, name: str = "arrays") -> list[np.ndarray]:
    return msg.content.array_records[name].to_numpy_ndarrays()


@client.query()
def query(msg: Message, context: Context) -> Message:
    """The coordinator's questions: `describe` (the site's record contract, model config
    and record counts), `moments` (sums of the train embeddings), `scores` (a histogram of
    the eval split's domain scores) and `domain` (the train split's domain)."""
    records, config, _ = _site(context)
    ask = str(msg.content.config_records["config"]["ask"])
    if ask == "describe":
        return Message(RecordDict({"config": ConfigRecord(site.describe(records, config).as_config())}), reply_to=msg)
    if ask == "domain":
        return Message(RecordDict({"config": ConfigRecord({"domain": json.dumps(site.site_domain(records))})}),
                       reply_to=msg)
    if ask == "moments":
        sums = site.moments(records, config.train, _weights(msg))
        return Message(RecordDict({"sums": ArrayRecord([sums["count"], sums["sum"], sums["outer"]])}), reply_to=msg)
    if ask == "scores":
        mean, precision = _weights(msg, "reference")
        counts = site.score_histogram(records, config.train, _weights(msg), mean, precision)
        return Message(RecordDict({"histogram": ArrayRecord([counts])}), reply_to=msg)
    raise ValueError(f"unknown question {ask!r}")


@client.train()
def train(msg: Message, context: Context) -> Message:
    records, config, out = _site(context)
    settings = msg.content.config_records["config"]
    # A site's optimizer state stays at the site, in a file of this run's own.
    kept = out / f"optimizer-{context.run_id}.npz" if settings.get("site-optimizer") == "keep" else None
    weights, metrics = site.local_train(records, config.train, _weights(msg), int(str(settings["local-epochs"])),
                                        int(str(settings.get("server-round", 0))),
                                        float(str(settings.get("proximal-mu", 0.0))),
                                        int(str(settings.get("rounds", 1))), kept)
    n = site.split_count(records, "train")
    return Message(RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(
        {"num-examples": n, **_uniform(config), **metrics})}), reply_to=msg)


def _uniform(config: PipelineConfig) -> dict[str, int]:
    """Under differential privacy every site weighs the same in the mean (the accounting's
    premise), whatever its record count."""
    return {UNIFORM_WEIGHT: 1} if config.federate.dp.on else {}


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    records, config, _ = _site(context)
    found = site.local_evaluate(records, config.train, _weights(msg))
    # The same keys from every site (Flower aggregates them weighted by num-examples); an
    # AUC is not averaged over sites, and a site's split may lack a class: evaluate measures it.
    metrics = {k: float(found.get(k, 0.0)) for k in site.EVAL_METRICS}
    n = site.split_count(records, "eval") if found else 0
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": n, **_uniform(config), **metrics})}),
                   reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    from ...pipeline.config import config_from_text
    from . import coordinator

    settings = json.loads(str(context.run_config[SETTINGS]))
    try:
        coordinator.federate(grid, config_from_text(settings["config"]), Path(settings["out"]), context.run_id)
    except MedseqError as exc:  # the run ends with its one line, which `medseq federate run` repeats
        print(f"{FAILED}{exc}", flush=True)
