"""Endpoint health for blue-green and rolling steps, pure parts: reading the gauges of a
flush, summing them over proxies and replicas, and which step waits on which cluster."""

from __future__ import annotations

import warnings

import pytest

from controlplane.analysis.health import HealthBoard, Membership, decode, encode, fleet
from controlplane.analysis.receiver import read_flush
from controlplane.model import DesiredState, parse_yaml
from controlplane.model.status import Phase, RolloutStatus
from controlplane.rollout.gate import HealthGate, health_gate
from tests.unit.test_analysis import _counter, _field

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # envoy-data-plane on import
    from envoy_data_plane.io.prometheus.client import (
        Gauge,
        LabelPair,
        Metric,
        MetricFamily,
        MetricType,
    )


def _gauge(name: str, values: dict[str, int]) -> MetricFamily:
    return MetricFamily(name=name, type=MetricType.GAUGE, metric=[
        Metric(label=[LabelPair(name="envoy.cluster_name", value=c)], gauge=Gauge(value=v))
        for c, v in values.items()])


def test_a_flush_gives_counts_and_membership_in_one_walk() -> None:
    raw = b"".join(_field(2, bytes(f)) for f in [
        _counter("cluster.upstream_rq_xx", 7, envoy_cluster_name="payments|v2",
                 envoy_response_code_class="2"),
        _gauge("cluster.membership_healthy", {"payments|v1": 2, "payments|v2": 1,
                                              "xds_cluster": 1}),
        _gauge("cluster.membership_total", {"payments|v1": 2, "payments|v2": 3,
                                            "xds_cluster": 1}),
        _gauge("cluster.membership_degraded", {"payments|v2": 0}),
    ])
    counts, membership = read_flush(raw)
    assert counts["payments|v2"].requests == 7
    assert membership == {"payments|v1": (2, 2), "payments|v2": (1, 3)}


def test_board_sums_proxies_and_forgets_gone_ones() -> None:
    board = HealthBoard()
    board.update(1, 10.0, {"p|v2": (2, 2)})
    board.update(2, 11.0, {"p|v2": (1, 2)})
    assert board.summary()["p|v2"] == Membership(2, 1, 3, 4, 10.0)
    board.drop(2)
    assert board.summary()["p|v2"] == Membership(1, 1, 2, 2, 10.0)
    board.update(1, 12.0, {"p|v2": (2, 2)})  # a newer flush replaces the stream's last
    assert board.summary()["p|v2"].as_of == 12.0


def test_replica_reports_add_up_and_round_trip() -> None:
    a = {"p|v2": Membership(1, 1, 2, 2, 10.0)}
    b = decode(encode({"p|v2": Membership(2, 2, 4, 4, 9.0), "p|v1": Membership(1, 1, 1, 1, 8)}))
    total = fleet([a, b], "p|v2")
    assert total == Membership(3, 3, 6, 6, 9.0)
    assert total.ready(expected=2, after=8.5)
    assert not total.ready(expected=2, after=9.0)  # every report must postdate the ACK
    assert not total.ready(expected=3, after=0)  # not yet the endpoints this step carries
    assert not fleet([a, b], "p|v3").ready(expected=0, after=0)  # nobody reported it
    assert "no proxy has reported" in fleet([], "p|v2").describe(2)
    assert "1/2 proxies see all healthy" in Membership(2, 1, 3, 4, 1).describe(2)


UPSTREAM = """
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec:
  active: v1
  versions:
    v1: {endpoints: ["10.0.0.1:80", "10.0.0.2:80"]}
    v2: {endpoints: ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]}
"""


def _state(strategy: str, health_check: bool = True) -> DesiredState:
    check = "  healthCheck: {path: /healthz, interval: 1s}\n" if health_check else ""
    return DesiredState.of(parse_yaml(UPSTREAM + check + f"""---
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: r}}
spec: {{upstream: payments, from: v1, to: v2, strategy: {strategy}, steps: [50, 100]}}
"""))


@pytest.mark.parametrize(("strategy", "status", "gate"), [
    ("bluegreen", RolloutStatus(Phase.PROGRESSING, 0, 0.0), HealthGate("payments|v2", 3)),
    ("bluegreen", RolloutStatus(Phase.PROGRESSING, 0, 0.0, applied=True), None),
    ("bluegreen", RolloutStatus(Phase.PROMOTING, 1, 100.0), None),
    ("rolling", RolloutStatus(Phase.PROGRESSING, 0, 50.0), HealthGate("payments|v1", 3)),
    ("rolling", RolloutStatus(Phase.PROMOTING, 1, 100.0), HealthGate("payments|v1", 3)),
    ("rolling", RolloutStatus(Phase.ROLLING_BACK, 1, 0.0), None),
    ("canary", RolloutStatus(Phase.PROGRESSING, 0, 50.0), None),
])
def test_which_steps_wait_on_health(strategy: str, status: RolloutStatus,
                                    gate: HealthGate | None) -> None:
    assert health_gate(_state(strategy), "r", status) == gate


def test_nothing_waits_without_a_health_check() -> None:
    status = RolloutStatus(Phase.PROGRESSING, 0, 0.0)
    assert health_gate(_state("bluegreen", health_check=False), "r", status) is None
