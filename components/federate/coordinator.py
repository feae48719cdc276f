"""The coordinator's side of a federation (the ServerApp's body; apps.py).

1. Ask every connected site what its records and model are; leave out, each in one
   line, a site whose record contract (the preprocessing its records were made with,
   their shape, classes, target) or model config differs from the federation's config.
2. Train: `federate.rounds` rounds of Flower's aggregator (`federate.aggregator`) over
   the sites that agree; a round completes with the sites that answer within
   `federate.round_timeout_s` (at least `federate.min_sites`). Under `federate.dp` each
   round trains exactly min_sites sites, each clips its update, the mean gets Gaussian
   noise and the privacy spent is accounted; a run whose rounds would spend more than
   `federate.dp.max_epsilon` is refused before anything is trained.
3. Pool the training domain's reference from the sites' sums, set its threshold on the
   pooled histogram of their eval scores, merge their training domains.
4. Write OUT/model, a SavedModel as `medseq train` writes it (a normal candidate for
   `medseq evaluate`, push and export), and OUT/federation.json, the run's record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Strategy,
)

from ...pipeline.config import FederateConfig, PipelineConfig, to_dict
from ...pipeline.errors import ConfigError
from ..io import deid
from ..model import domain
from ..model.network import build_model
from ..model.saved_model import export_saved_model
from ..model.tta import tta_table
from . import site
from .records import MODEL_DIR, RECORD_FILE, UNIFORM_WEIGHT, FederationError

ASK_AGAIN_S = 30.0  # a site that did not describe itself is asked again after this long
STARTUP_ASKS = 3  # before the first round: how often a silent site is asked to describe itself


class SitesGrid(Grid):
    """The Grid as the aggregators see it: the sites that agree with the federation's
    config. A site that connects later (a new one, or one that dropped out and came back
    under a new node id) is asked to describe itself first and joins the next round if it
    agrees."""

    def __init__(self, grid: Grid, federation: Federation) -> None:
        self.grid, self.federation = grid, federation

    def get_node_ids(self) -> list[int]:
        connected = list(self.grid.get_node_ids())
        self.federation.admit(self.grid, self.federation.newcomers(connected))
        return [n for n in connected if n in self.federation.agreed]

    def set_run(self, run_id: Any) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


def _ask(grid: Grid, nodes: Sequence[int], ask: str, timeout: float, **records: Any) -> dict[int, Message]:
    """One question to each of `nodes`; the answers by node (a site silent past `timeout`
    is absent)."""
    content = {"config": ConfigRecord({"ask": ask}), **records}
    messages = [Message(RecordDict(content), dst_node_id=n, message_type="query") for n in nodes]
    return {reply.metadata.src_node_id: reply for reply in grid.send_and_receive(messages, timeout=timeout)}


def _connected(grid: Grid, settings: FederateConfig) -> list[int]:
    """The connected sites, once at least min_sites are (or round_timeout_s passed)."""
    deadline = time.monotonic() + settings.round_timeout_s
    nodes = list(grid.get_node_ids())
    while len(nodes) < settings.min_sites and time.monotonic() < deadline:
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    if len(nodes) < settings.min_sites:
        raise FederationError(f"{len(nodes)} site(s) connected within federate.round_timeout_s "
                              f"({settings.round_timeout_s:.0f} s); federate.min_sites is {settings.min_sites}")
    return nodes


def _first_sites(grid: Grid, federation: Federation, connected: Sequence[int]) -> None:
    """Admits the connected sites, asking those that have not described themselves again
    (a SuperNode's first ClientApp cold-starts TensorFlow, slowly when several start at
    once) until min_sites agree or STARTUP_ASKS questions went unanswered."""
    pending = list(connected)
    for _ in range(STARTUP_ASKS):
        federation.admit(grid, pending)
        if len(federation.agreed) >= federation.config.federate.min_sites:
            return
        pending = [n for n in grid.get_node_ids() if n not in federation.seen]
        if not pending:
            return


def difference(found: dict[str, Any], expected: dict[str, Any], prefix: str) -> str | None:
    """The first key whose value differs, as `prefix.key found X, expected Y`; None when equal."""
    for key in sorted(set(found) | set(expected)):
        if found.get(key) != expected.get(key):
            return f"{prefix}.{key} is {json.dumps(found.get(key))}, the federation's {json.dumps(expected.get(key))}"
    return None


class Federation:
    """Which sites take part: those whose records and model agree with the federation's
    config (and with the first admitted site's classes); each other one is left out with
    its one line. Sites are named by a keyed hash of their node id."""

    def __init__(self, config: PipelineConfig, key: bytes) -> None:
        self.config, self.key = config, key
        self.model, self.preprocess = site.model_config(config.train), to_dict(config.preprocess)
        self.contract: dict[str, Any] | None = None
        self.agreed: list[int] = []
        self.seen: set[int] = set()
        self.refused: dict[str, str] = {}
        self.unanswered: dict[int, float] = {}  # node -> when it last failed to describe itself

    def name(self, node: int) -> str:
        return deid.keyed_hash(self.key, "site", str(node))[:12]

    def admit(self, grid: Grid, nodes: Sequence[int]) -> None:
        """Asks `nodes` to describe themselves and admits those that agree; one that does
        not answer in time (still starting, or gone) is asked again at a later round."""
        if not nodes:
            return
        replies = _ask(grid, nodes, "describe", self.config.federate.round_timeout_s)
        for node in nodes:
            reply = replies.get(node)
            if reply is None:
                self.unanswered[node] = time.monotonic()
                print(f"federate: site {self.name(node)} did not describe itself within federate.round_timeout_s; "
                      "asked again later", flush=True)
                continue
            self.seen.add(node)
            why = self.disagreement(reply)
            if why is None:
                self.agreed.append(node)
                print(f"federate: site {self.name(node)} joined", flush=True)
            else:
                self.refused[self.name(node)] = why
                print(f"federate: site {self.name(node)} left out: {why}", flush=True)

    def newcomers(self, connected: Sequence[int]) -> list[int]:
        """Connected sites not yet admitted or left out (one that did not answer: again
        after ASK_AGAIN_S)."""
        now = time.monotonic()
        return [n for n in connected
                if n not in self.seen and now - self.unanswered.get(n, -ASK_AGAIN_S) >= ASK_AGAIN_S]

    def disagreement(self, reply: Message) -> str | None:
        """Why a site's description disagrees with the federation, or None."""
        if reply.has_error():
            return f"its records could not be described ({reply.error.reason})"
        described = reply.content.config_records["config"]
        contract, model = json.loads(str(described["contract"])), json.loads(str(described["model"]))
        privacy = json.loads(str(described.get("privacy", "{}")))
        why = (difference(contract["preprocess"], self.preprocess, "preprocess")
               or difference(model, self.model, "train")
               or difference(privacy, to_dict(self.config.federate.dp), "federate.dp"))
        if why is None and self.contract is not None:
            why = difference({k: v for k, v in contract.items() if k != "preprocess"},
                             {k: v for k, v in self.contract.items() if k != "preprocess"}, "records")
        if why is None and int(str(described["train_records"])) < 1:
            why = "its train split holds no record"
        if why is None and self.contract is None:
            self.contract = contract
        return why


def aggregator(settings: FederateConfig) -> FedAvg:
    common: dict[str, Any] = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": settings.min_sites,
              "min_evaluate_nodes": settings.min_sites, "min_available_nodes": settings.min_sites}
    if settings.dp.on:
        # Every round trains exactly min_sites sites (the accountant's release is a mean of
        # that many clipped updates, each weighing the same): a fraction that rounds to no
        # site leaves min_train_nodes to decide.
        common.update(fraction_train=1e-9, weighted_by_key=UNIFORM_WEIGHT)
    if settings.aggregator == "fedavgm":
        return FedAvgM(**common, server_momentum=settings.server_momentum)
    if settings.aggregator == "fedprox":
        return FedProx(**common, proximal_mu=settings.proximal_mu)
    if settings.aggregator == "fedmedian":
        return FedMedian(**common)
    if settings.aggregator == "trimmed_mean":
        return FedTrimmedAvg(**common, beta=settings.trim_fraction)
    return FedAvg(**common)


def private(strategy: FedAvg, settings: FederateConfig, population: int) -> Strategy:
    """`strategy` under `federate.dp`: Flower's central DP with client-side clipping (the
    sites clip, apps.clipped), its privacy spent accounted per round; `strategy` itself
    when DP is off."""
    if not settings.dp.on:
        return strategy
    return DifferentialPrivacyClientSideFixedClipping(strategy, settings.dp.noise_multiplier, settings.dp.clipping_norm,
                                                      settings.min_sites, accountant=_accountant(settings, population))


def _accountant(settings: FederateConfig, population: int) -> Any:
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    return RdpAccountant(PrivacyConfig(settings.dp.delta, max(population, settings.min_sites),
                                       NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION))


def privacy_budget(settings: FederateConfig) -> float:
    """The epsilon (at federate.dp.delta) that federate.rounds releases spend; a budget
    they would exceed is refused in one line before anything is trained."""
    from flwr.serverapp import GaussianPrivacyEvent

    accountant = _accountant(settings, settings.min_sites)
    accountant.compose(GaussianPrivacyEvent(settings.dp.noise_multiplier, settings.min_sites, settings.min_sites),
                       settings.rounds)
    epsilon = float(accountant.get_epsilon(settings.dp.delta))
    if settings.dp.max_epsilon is not None and epsilon > settings.dp.max_epsilon:
        raise FederationError(f"federate.dp: {settings.rounds} rounds at noise_multiplier "
                              f"{settings.dp.noise_multiplier:g} spend epsilon {epsilon:.3g} at delta "
                              f"{settings.dp.delta:g}, above max_epsilon {settings.dp.max_epsilon:g}; expected fewer "
                              "rounds or more noise")
    return epsilon


def _update_norm(sent: ArrayRecord, received: ArrayRecord) -> float:
    """The L2 norm of a site's update: the change from the weights it was sent, over every weight."""
    return float(np.sqrt(sum(float(np.sum(np.square(a.astype(np.float64) - b))) for a, b in
                             zip(sent.to_numpy_ndarrays(), received.to_numpy_ndarrays(), strict=True))))


def _recorded(strategy: Strategy, rounds: list[dict[str, Any]], kept: dict[int, ArrayRecord], federation: Federation,
              start: float, initial: ArrayRecord) -> Strategy:
    """`strategy`, noting each round's participants, the bytes each sent, the largest L2
    norm of their updates and when its training ended (seconds from `start`), and keeping
    each released round's weights in `kept`."""
    train = strategy.aggregate_train
    released = [initial]  # the weights the sites were last sent

    def aggregate_train(server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                 MetricRecord | None]:
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        sent = [sum(len(a.data) for a in r.content.array_records["arrays"].values()) for r in ok]
        norms = [_update_norm(r.content.array_records["arrays"], released[-1]) for r in ok]
        arrays, metrics = train(server_round, replies)
        rounds.append({"round": server_round, "ended_s": round(time.monotonic() - start, 1),
                       "sites": sorted(federation.name(r.metadata.src_node_id) for r in ok),
                       "failed": sum(1 for r in replies if r.has_error()),
                       "bytes_sent_per_site": int(np.mean(sent)) if sent else 0,
                       "largest_update_norm": round(max(norms), 6) if norms else 0.0,
                       "released": arrays is not None})
        if arrays is not None:
            kept[server_round] = arrays
            released.append(arrays)
        return arrays, metrics

    strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]
    return strategy


def _pooled_domain(grid: Grid, sites: list[int], weights: ArrayRecord, settings: FederateConfig,
                   false_alarm: float) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any], dict[str, Any]]:
    """The reference (mean, precision) pooled from the sites' sums, its threshold from the
    pooled histogram of their eval scores, and the merged training domain."""
    asked = _ask(grid, sites, "moments", settings.round_timeout_s, arrays=weights)
    sums = [r.content.array_records["sums"].to_numpy_ndarrays() for r in asked.values() if not r.has_error()]
    if not sums:
        raise FederationError("no site answered for the training domain's reference")
    n = int(sum(s[0][0] for s in sums))
    mean, precision = domain.pooled_reference(n, np.sum([s[1] for s in sums], axis=0),
                                              np.sum([s[2] for s in sums], axis=0))
    histograms = [r.content.array_records["histogram"].to_numpy_ndarrays()[0] for r in _ask(
        grid, sites, "scores", settings.round_timeout_s, arrays=weights,
        reference=ArrayRecord([mean, precision])).values() if not r.has_error()]
    counts = np.sum(histograms, axis=0)
    cumulative = np.cumsum(counts) / max(counts.sum(), 1)
    threshold = float(site.SCORE_BINS[1:][np.searchsorted(cumulative, 1 - false_alarm)])
    score = {"threshold": threshold, "false_alarm": false_alarm, "set_on": "eval (pooled over sites, 0.01 bins)",
             "dimensions": int(mean.shape[0]), "fitted_on_records": n}
    domains = [json.loads(str(r.content.config_records["config"]["domain"])) for r in _ask(
        grid, sites, "domain", settings.round_timeout_s).values() if not r.has_error()]
    return (mean, precision), score, merge_domains(domains)


def merge_domains(domains: list[dict[str, Any]]) -> dict[str, Any]:
    """The union of the sites' training domains: every value seen, the widest ranges."""
    def widest(ranges: list[list[float] | None]) -> list[float] | None:
        known = [r for r in ranges if r]
        return [min(r[0] for r in known), max(r[1] for r in known)] if known else None

    merged: dict[str, Any] = {key: sorted({v for d in domains for v in d.get(key, [])})
                              for key in ("modalities", "frame_axes", "colours", "manufacturers")}
    merged["valid_frames"] = widest([d.get("valid_frames") for d in domains])
    merged["pixel_spacing_mm"] = widest([d.get("pixel_spacing_mm") for d in domains])
    axes = {a for d in domains for a in d.get("frame_interval", {})}
    merged["frame_interval"] = {a: widest([d.get("frame_interval", {}).get(a) for d in domains]) for a in sorted(axes)}
    merged["records"] = sum(int(d.get("records", 0)) for d in domains)
    return merged


def federate(grid: Grid, config: PipelineConfig, out: Path, run_id: int) -> Path:
    """The federation's run (module docstring); returns OUT/model."""
    settings = config.federate
    if config.train.target != "class":
        raise ConfigError(f"federated training answers a class per series for now; train.target is "
                          f"{config.train.target}")
    start = time.monotonic()
    epsilon = privacy_budget(settings) if settings.dp.on else None
    federation = Federation(config, deid.load_key(config.ingest.hash_key_file))
    _first_sites(grid, federation, _connected(grid, settings))
    if len(federation.agreed) < settings.min_sites or federation.contract is None:
        raise FederationError(f"{len(federation.agreed)} site(s) agree with the federation's config; "
                              f"federate.min_sites is {settings.min_sites}")
    spec = site.spec_of(federation.contract, config)
    keras.utils.set_random_seed(config.train.seed)
    model = build_model(spec, config.train)
    rounds: list[dict[str, Any]] = []
    kept: dict[int, ArrayRecord] = {}
    initial = ArrayRecord(model.get_weights())
    strategy = _recorded(private(aggregator(settings), settings, len(federation.agreed)), rounds, kept, federation,
                         start, initial)
    result = strategy.start(SitesGrid(grid, federation), initial, num_rounds=settings.rounds,
                            timeout=settings.round_timeout_s,
                            train_config=ConfigRecord({"local-epochs": settings.local_epochs,
                                                                       "rounds": settings.rounds,
                                                                       "site-optimizer": settings.site_optimizer}))
    for entry in rounds:
        found = result.evaluate_metrics_clientapp.get(entry["round"])
        entry["eval"] = {k: float(v) for k, v in dict(found or {}).items() if isinstance(v, int | float)}
    # The round whose model the sites' eval splits found best (pooled eval loss), as train
    # exports its best epoch; the last round's without an evaluation.
    scored = [(e["eval"]["eval_loss"], e["round"]) for e in rounds if "eval_loss" in e["eval"] and e["round"] in kept]
    best = min(scored)[1] if scored else max(kept, default=0)
    chosen = kept.get(best, result.arrays)
    model.set_weights(chosen.to_numpy_ndarrays())
    live = [n for n in federation.agreed if n in set(grid.get_node_ids())]
    reference, score, trained_on = _pooled_domain(grid, live, chosen, settings, config.train.domain_false_alarm)
    trained_on["score"] = score
    record = {"run_id": int(run_id), "sites": sorted(federation.name(n) for n in federation.agreed),
              "left_out": federation.refused, "aggregator": settings.aggregator, "rounds": rounds,
              "best_round": best,
              "local_epochs": settings.local_epochs, "min_sites": settings.min_sites,
              "seconds": round(time.monotonic() - start, 1),
              "differential_privacy": _privacy_record(strategy, settings, epsilon)}
    training = {"federated": record, "epochs": settings.rounds * settings.local_epochs, "config": to_dict(config.train),
                "domain": trained_on}
    model_dir = export_saved_model(model, spec, out / MODEL_DIR, training, reference,
                                   tta_table(spec.shape, config.train))
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return model_dir


def _privacy_record(strategy: Strategy, settings: FederateConfig, planned: float | None) -> dict[str, Any] | None:
    """What the run spent of its privacy budget (None without federate.dp)."""
    if not isinstance(strategy, DifferentialPrivacyClientSideFixedClipping):
        return None
    spent = strategy.privacy_spent()
    return {"epsilon": round(spent.epsilon, 6) if spent else 0.0, "delta": settings.dp.delta,
            "releases": spent.num_releases if spent else 0, "epsilon_if_every_round_released": planned,
            "noise_multiplier": settings.dp.noise_multiplier, "clipping_norm": settings.dp.clipping_norm,
            "sites_per_round": settings.min_sites, "max_epsilon": settings.dp.max_epsilon,
            "accounting": (spent.accounting_method if spent else "rdp") + " (dp-accounting via Flower); one release "
                          "per round; neighbouring federations differ by one site; no amplification by sampling; "
                          "the sites' eval metrics are not part of it"}
