"""Who pushed a flush, and which clusters their group routes to: the pure parts."""

from __future__ import annotations

import logging

import pytest

from controlplane.analysis import admission, wire
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


def test_ignored_senders_are_logged_once_per_interval_and_remembered_in_bounds(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "MAX_LOGGED_SENDERS", 2)
    now = [1000.0]
    reasons: list[str] = []
    gate = admission.Admission(connected=lambda sender: False, clusters_of=lambda g: (),
                               on_ignored=reasons.append, clock=lambda: now[0])
    a, b, c = (admission.Sender(node_id=n, group="edge") for n in "abc")
    caplog.set_level(logging.WARNING, logger="controlplane.analysis.admission")
    for sender in (a, a, b, a):
        assert not gate.counts(sender)
    assert len(caplog.records) == 2 and reasons == [admission.NOT_CONNECTED] * 4
    now[0] += admission.LOG_EVERY_S
    gate.counts(a)
    assert len(caplog.records) == 3  # a minute later: once more
    gate.counts(c)  # a third sender: the oldest remembered (b) is forgotten
    assert len(gate._logged) == 2
    gate.counts(b)
    assert len(caplog.records) == 5 and "'b'" in caplog.records[-1].getMessage()
