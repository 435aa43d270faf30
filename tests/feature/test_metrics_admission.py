"""Metrics only from the fleet: the MetricsService receiver as `serve` wires it (plaintext),
on a real grpc.aio server on port 0 next to ADS, with real gRPC clients pushing crafted
StreamMetricsMessage bytes. A flush counts only from a connected xDS proxy of the group
its node claims, and only for the clusters that group routes to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from controlplane.analysis import Window
from controlplane.analysis.admission import FOREIGN_CLUSTERS, NOT_CONNECTED, RoutedClusters
from controlplane.analysis.health import HealthBoard
from controlplane.analysis.window import total
from controlplane.model import DesiredState, parse_yaml
from controlplane.telemetry import Telemetry
from controlplane.wiring import metrics_receiver
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.proxies import ProxyRegistry
from controlplane.xds.resources import CLUSTER
from controlplane.xds.server import AggregatedDiscoveryServer
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.stream import node_cluster
from tests.support.ads import AdsClient, node
from tests.support.metrics_push import MetricsPush, flush
from tests.support.states import PAYMENTS_EDGE
from tests.support.wait import wait_for
from tests.support.xds_resources import eds_cluster, endpoints, resources

# `edge` routes to payments (v1, v2); `internal` to ledger (v1, v2).
STATE = PAYMENTS_EDGE + """---
apiVersion: controlplane/v1
kind: Listener
metadata: {name: internal-http}
spec: {group: internal, port: 10001}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: ledger}
spec: {listener: internal-http, upstream: ledger}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: ledger}
spec:
  active: v1
  versions: {v1: {endpoints: ["127.0.0.1:9011"]}, v2: {endpoints: ["127.0.0.1:9012"]}}
"""
V2, LEDGER = "payments|v2", "ledger|v1"


@dataclass
class Plane:
    target: str
    registry: ProxyRegistry
    window: Window
    health: HealthBoard
    telemetry: Telemetry

    def requests(self, cluster: str) -> int:
        return total([self.window.slots], cluster, start=0, end=2e9).requests

    def ignored(self, reason: str) -> float:
        return self.telemetry.registry.get_sample_value(
            "controlplane_metrics_ignored_total", {"reason": reason}) or 0.0


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    cache = SnapshotCache()
    cache.mark_ready()
    for group in ("edge", "internal"):
        cache.set_snapshot(group, Snapshot.build(resources(clusters=[eds_cluster("c")],
                                                             endpoints=[endpoints("c", [])])))
    registry, window, health, telemetry = ProxyRegistry(), Window(), HealthBoard(), Telemetry()
    server = grpc.aio.server()
    AggregatedDiscoveryServer(cache, registry).add_to_server(server)
    metrics_receiver(window, health, group_of=node_cluster, registry=registry,
                     routed=RoutedClusters(DesiredState.of(parse_yaml(STATE))),
                     revoked=frozenset(), on_ignored=telemetry.ignored_metrics,
                     ).add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Plane(f"127.0.0.1:{port}", registry, window, health, telemetry)
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def proxy(plane: Plane, node_id: str, group: str) -> AsyncIterator[AdsClient]:
    """A connected xDS proxy (an ADS stream that asked for clusters)."""
    async with AdsClient(plane.target) as ads:
        await ads.request(CLUSTER, node=node(node_id, group))
        await ads.recv()
        assert plane.registry.is_connected(group, node_id)
        yield ads


async def test_a_connected_proxy_counts_only_for_the_clusters_its_group_routes_to(
    plane: Plane, caplog: pytest.LogCaptureFixture,
) -> None:
    async with proxy(plane, "edge-1", "edge"), MetricsPush(plane.target) as push:
        await push.send(flush({V2: (90, 10), LEDGER: (0, 500)}, node_id="edge-1",
                              cluster="edge", healthy={V2: (1, 1), LEDGER: (0, 1)}))
        await wait_for(lambda: plane.requests(V2) == 100, message="edge-1's v2 counts")
        await push.send(flush({LEDGER: (0, 700)}))  # later flushes carry no identifier
        await wait_for(lambda: plane.ignored(FOREIGN_CLUSTERS) == 2)
        assert plane.requests(LEDGER) == 0  # another group's cluster: dropped
        assert set(plane.health.summary()) == {V2}
        assert plane.requests(V2) == 100 and plane.ignored(NOT_CONNECTED) == 0
    logged = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(logged) == 1, logged  # rate-limited: one line for two such flushes
    assert "'edge-1'" in logged[0] and "'edge'" in logged[0] and LEDGER in logged[0]


async def test_a_sender_counts_only_while_it_is_a_connected_proxy_of_its_group(
    plane: Plane, caplog: pytest.LogCaptureFixture,
) -> None:
    async with MetricsPush(plane.target) as push:
        await push.send(flush({V2: (0, 50)}, node_id="edge-1", cluster="edge"))
        await wait_for(lambda: plane.ignored(NOT_CONNECTED) == 1, message="ignored flush")
        await push.send(flush({V2: (0, 50)}))
        await wait_for(lambda: plane.ignored(NOT_CONNECTED) == 2)
        assert plane.requests(V2) == 0
        async with proxy(plane, "edge-1", "edge"):  # its ADS stream comes up: it counts
            await push.send(flush({V2: (30, 0)}, healthy={V2: (1, 1)}))
            await wait_for(lambda: plane.requests(V2) == 30, message="counted once connected")
            assert plane.health.summary()[V2].proxies == 1
        await wait_for(lambda: not plane.registry.is_connected("edge", "edge-1"))
        await push.send(flush({V2: (0, 40)}, healthy={V2: (0, 1)}))  # ADS gone: not any more
        await wait_for(lambda: plane.ignored(NOT_CONNECTED) == 3)
        assert plane.requests(V2) == 30
        assert plane.health.summary() == {}  # what it said while connected goes too
    logged = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(logged) == 1, logged  # at most one line per sender per LOG_EVERY_S
    assert "'edge-1'" in logged[0] and "'edge'" in logged[0]
    assert "not a connected xDS proxy" in logged[0]


async def test_a_node_claiming_another_group_than_its_ads_stream_does_not_count(
    plane: Plane,
) -> None:
    async with proxy(plane, "edge-1", "edge"), MetricsPush(plane.target) as push:
        await push.send(flush({LEDGER: (0, 100)}, node_id="edge-1", cluster="internal"))
        await wait_for(lambda: plane.ignored(NOT_CONNECTED) == 1)
        assert plane.requests(LEDGER) == 0


@pytest.mark.parametrize(
    ("node_id", "cluster", "code", "words"),
    [
        pytest.param("n" * 257, "edge", grpc.StatusCode.INVALID_ARGUMENT,
                     "identifier.node.id: 257 bytes, longer than 256", id="long-node-id"),
        pytest.param("edge-1", "e" * 300, grpc.StatusCode.INVALID_ARGUMENT,
                     "identifier.node.cluster: 300 bytes, longer than 256", id="long-cluster"),
        pytest.param(None, "", grpc.StatusCode.INVALID_ARGUMENT,
                     "first message must carry the node", id="no-identifier"),
        pytest.param("edge-1", "", grpc.StatusCode.INVALID_ARGUMENT, "node.cluster is empty",
                     id="no-cluster"),
        pytest.param("", "edge", grpc.StatusCode.INVALID_ARGUMENT, "identifier.node.id: empty",
                     id="no-node-id"),
        pytest.param("n" * 256, "edge", grpc.StatusCode.OK, "", id="256-bytes-is-fine"),
    ],
)
async def test_a_stream_that_names_no_acceptable_node_is_refused(
    plane: Plane, node_id: str | None, cluster: str, code: grpc.StatusCode, words: str,
) -> None:
    async with MetricsPush(plane.target) as push:
        await push.send(flush({V2: (0, 10)}, node_id=node_id, cluster=cluster))
        got, details = await asyncio.wait_for(push.result(), timeout=5)
    assert got == code, details
    assert words in details
    assert plane.requests(V2) == 0


@pytest.fixture(autouse=True)
def _warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="controlplane.analysis")
