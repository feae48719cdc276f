"""The coordinator's aggregators (federate.aggregator) on sites' replies as Flower hands
them to the strategy: the robust ones hold against one site's wild update, FedAvgM's
server momentum carries a direction on from round to round."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medseq.pipeline.config import FederateConfig

pytest.importorskip("flwr", reason="federated training needs Flower: pip install -e '.[federated]'")


def replies(weights: list[list[float]], examples: int = 10) -> list:
    """Each site's train reply: its weights and its number of examples."""
    from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    out = []
    for node, w in enumerate(weights, start=1):
        meta = Metadata(run_id=1, message_id=f"reply-{node}", src_node_id=node, dst_node_id=0,
                        reply_to_message_id=f"ask-{node}", group_id="1", created_at=time.time(), ttl=60.0,
                        message_type="train")
        content = RecordDict({"arrays": ArrayRecord([np.asarray(w, np.float32)]),
                              "metrics": MetricRecord({"num-examples": examples})})
        out.append(Message(metadata=meta, content=content))
    return out


def aggregated(settings: FederateConfig, weights: list[list[float]], strategy=None, server_round: int = 1):
    from medseq.components.federate.coordinator import aggregator

    strategy = strategy or aggregator(settings)
    arrays, _ = strategy.aggregate_train(server_round, replies(weights))
    return arrays.to_numpy_ndarrays()[0]


def test_a_robust_aggregator_holds_against_one_wild_site():
    sites = [[1.0, 1.0], [1.2, 0.8], [100.0, -100.0]]  # the third site's update is wild (broken, or hostile)
    mean = aggregated(FederateConfig(min_sites=3), sites)
    assert mean[0] > 30  # FedAvg follows it
    for name in ("fedmedian", "trimmed_mean"):
        robust = aggregated(FederateConfig(aggregator=name, min_sites=3, trim_fraction=0.34), sites)
        np.testing.assert_allclose(robust, [1.2, 0.8], atol=1e-6)  # the middle site: the wild one has no say


def test_fedavgm_carries_the_direction_of_earlier_rounds():
    """Both sites move the same way each round: FedAvg lands on their mean, FedAvgM goes
    past it by the server momentum (0.9) of the round before."""
    from flwr.app import ArrayRecord

    from medseq.components.federate.coordinator import aggregator

    momentum = aggregator(FederateConfig(aggregator="fedavgm", min_sites=2, server_momentum=0.9))
    momentum.current_arrays = ArrayRecord([np.zeros(2, np.float32)])  # the model the run starts from
    plain = aggregator(FederateConfig(min_sites=2))
    for server_round, w in ((1, 1.0), (2, 2.0)):
        moved = aggregated(FederateConfig(), [[w, w], [w, w]], momentum, server_round)
        mean = aggregated(FederateConfig(), [[w, w], [w, w]], plain, server_round)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(moved, [2.9, 2.9], rtol=1e-6)  # 1 + (1 + 0.9 x 1)
