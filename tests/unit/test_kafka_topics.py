"""How runwire's topics are replicated, by cluster size (the rule ensure_topics applies)."""

import pytest

from runwire.ingest.kafka_io import min_insync_for, replication_for


@pytest.mark.parametrize("brokers, replication, min_insync", [(1, 1, 1), (2, 2, 1), (3, 3, 2), (9, 3, 2)])
def test_replication_follows_the_cluster_size_up_to_three(brokers, replication, min_insync):
    assert replication_for(brokers) == replication
    assert min_insync_for(replication) == min_insync


def test_a_configured_replication_factor_wins():
    assert replication_for(9, configured=5) == 5
    assert replication_for(1, configured=3) == 3  # the broker then refuses it, with its own error
