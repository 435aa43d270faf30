"""Who pushed a flush, and which clusters their group routes to: the pure parts."""

from __future__ import annotations

from controlplane.analysis import wire
from controlplane.analysis.admission import RoutedClusters, routed_clusters
from controlplane.model import DesiredState, parse_yaml
from tests.feature.test_metrics_admission import STATE
from tests.support.metrics_push import flush


def test_identifier_reads_node_id_and_cluster_and_nothing_else() -> None:
    first = flush({"a|b": (1, 0)}, node_id="edge-1", cluster="edge")
    assert wire.identifier(first) == wire.Identifier(b"edge-1", b"edge")
    assert wire.identifier(flush({"a|b": (1, 0)})) is None  # later flushes carry none
    after = flush({"a|b": (1, 0)}) + flush({}, node_id="n", cluster="c")
    assert wire.identifier(after) == wire.Identifier(b"n", b"c")  # wherever it is


def test_routed_clusters_are_every_version_of_the_upstreams_a_groups_routes_reach() -> None:
    state = DesiredState.of(parse_yaml(STATE))
    assert routed_clusters(state) == {
        "edge": frozenset({"payments|v1", "payments|v2"}),
        "internal": frozenset({"ledger|v1", "ledger|v2"}),
    }
    routed = RoutedClusters(state)
    assert routed("edge") is routed("edge")  # worked out once per state
    assert routed("nobody") == frozenset()
    routed.update(DesiredState())
    assert routed("edge") == frozenset()
