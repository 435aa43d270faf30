"""A real Envoy 1.40, bootstrapped by `controlplane bootstrap`, against our xDS server,
SotW and Delta, with hand-built snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import duration_pb2

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.snapshot import Snapshot
from tests.support.acks import wait_acked
from tests.support.ads import XdsHarness, xds_server
from tests.support.controlplane import envoy_bootstrap
from tests.support.envoy import Envoy, start_envoy_async
from tests.support.http import get
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for
from tests.support.xds_resources import simple_app

pytestmark = pytest.mark.e2e

GROUP = "edge"
SWITCH_DEADLINE = 2.0
"""After a snapshot change, requests must reach the new config within this."""


@dataclass
class Stack:
    xds: XdsHarness
    envoy: Envoy
    upstreams: dict[str, Upstream]
    listener_port: int

    def app(self, generation: int, version: str) -> Snapshot:
        """Cluster app-N → upstream `version`, routes-N, on the one listener `http`."""
        return Snapshot.build(simple_app(
            cluster=f"app-{generation}", upstream=self.upstreams[version].address,
            listener="http", listener_port=self.listener_port, route=f"routes-{generation}",
        ))

    async def served_by(self, version: str) -> bool:
        try:
            response = await get(self.listener_port, "/anything", timeout=1.0)
        except (OSError, TimeoutError):
            return False
        return response.status == 200 and response.json()["version"] == version


@pytest.fixture(params=["sotw", "delta"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    upstreams = {v: await Upstream(v).start() for v in ("v1", "v2")}
    try:
        async with xds_server() as xds:
            config = await asyncio.to_thread(
                envoy_bootstrap, f"envoy-{request.param}", GROUP, xds.target,
                delta=request.param == "delta")
            envoy = await start_envoy_async(config, tmp_path)
            try:
                yield Stack(xds, envoy, upstreams, free_port())
            finally:
                envoy.stop()
    finally:
        for upstream in upstreams.values():
            await upstream.stop()


def full_versions(snapshot: Snapshot) -> dict[str, str]:
    return {t: snapshot.version(t) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}


async def test_requests_follow_renamed_clusters_and_routes(stack: Stack) -> None:
    first = stack.app(1, "v1")
    stack.xds.cache.set_snapshot(GROUP, first)
    await wait_for(lambda: stack.served_by("v1"), timeout=15, message="first request via Envoy")
    assert await wait_acked(stack.xds.registry, GROUP, full_versions(first), timeout=5)

    for generation, version in ((2, "v2"), (3, "v1"), (4, "v2")):
        snapshot = stack.app(generation, version)
        stack.xds.cache.set_snapshot(GROUP, snapshot)
        await wait_for(lambda v=version: stack.served_by(v), timeout=SWITCH_DEADLINE,  # type: ignore[misc]
                       message=f"generation {generation} serves {version}")
        assert await wait_acked(stack.xds.registry, GROUP, full_versions(snapshot), timeout=5)
        await wait_for(lambda g=generation: stack.envoy.dynamic_names("clusters") == [f"app-{g}"],  # type: ignore[misc]
                       timeout=SWITCH_DEADLINE, message="old clusters removed")

    [proxy] = stack.xds.registry.list()
    assert proxy.node_id.startswith("envoy-") and proxy.build_version.startswith("1.40")
    assert all(t.last_nack is None for t in proxy.types), proxy.types
    assert "envoy.filters.http.router" in proxy.extensions


def rejected_cluster(name: str, upstream: tuple[str, int]) -> cluster_pb2.Cluster:
    """A STATIC cluster Envoy must NACK: connect_timeout must be > 0 (proto validation)."""
    host, port = upstream
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_pb2.Duration(seconds=-1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
                endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(socket_address=address_pb2.SocketAddress(
                        address=host, port_value=port))))])],
        ),
    )


async def test_nack_keeps_old_config_and_does_not_loop(stack: Stack) -> None:
    good = stack.app(1, "v1")
    stack.xds.cache.set_snapshot(GROUP, good)
    await wait_for(lambda: stack.served_by("v1"), timeout=15)
    assert await wait_acked(stack.xds.registry, GROUP, full_versions(good), timeout=5)

    resources = simple_app(cluster="app-1", upstream=stack.upstreams["v1"].address,
                           listener="http", listener_port=stack.listener_port, route="routes-1")
    bad_cluster = rejected_cluster("bad", stack.upstreams["v2"].address)
    resources[CLUSTER] = [*resources[CLUSTER], bad_cluster]
    bad = Snapshot.build(resources)
    stack.xds.cache.set_snapshot(GROUP, bad)

    def nack() -> str | None:
        [proxy] = stack.xds.registry.list()
        cds = proxy.type(CLUSTER)
        return cds.last_nack if cds is not None else None

    text = await wait_for(nack, timeout=5, message="CDS NACK recorded")
    assert "Expected positive duration" in text, text  # Envoy does not name the cluster
    [proxy] = stack.xds.registry.list()
    cds = proxy.type(CLUSTER)
    assert cds is not None and cds.last_nack_version == bad.version(CLUSTER)
    assert cds.acked_version == good.version(CLUSTER)
    assert not await wait_acked(stack.xds.registry, GROUP, {CLUSTER: bad.version(CLUSTER)},
                                                   timeout=1)

    # Envoy keeps serving the old config, and the server does not resend the rejected version.
    sent = cds.responses
    for _ in range(5):
        assert await stack.served_by("v1")
    looped = await stack.xds.registry.wait_until(
        lambda: stack.xds.registry.list()[0].type(CLUSTER).responses != sent,  # type: ignore[union-attr]
        timeout=1.5,
    )
    assert not looped, "the rejected CDS version was sent again"

    fixed = stack.app(2, "v2")
    stack.xds.cache.set_snapshot(GROUP, fixed)
    await wait_for(lambda: stack.served_by("v2"), timeout=SWITCH_DEADLINE)
    assert await wait_acked(stack.xds.registry, GROUP, full_versions(fixed), timeout=5)


async def test_envoy_rejoins_a_restarted_server_without_config_change(
    stack: Stack, tmp_path: Path
) -> None:
    snapshot = stack.app(1, "v1")
    stack.xds.cache.set_snapshot(GROUP, snapshot)
    await wait_for(lambda: stack.served_by("v1"), timeout=15)
    assert await wait_acked(stack.xds.registry, GROUP, full_versions(snapshot), timeout=5)
    port = stack.xds.port
    await stack.xds.server.stop(None)
    async with xds_server(port=port) as second:
        second.cache.set_snapshot(GROUP, stack.app(1, "v1"))  # rebuilt: same versions
        assert await wait_acked(second.registry, GROUP, full_versions(snapshot), timeout=10)
        [proxy] = second.registry.list()
        assert all(t.last_nack is None for t in proxy.types)
        assert await stack.served_by("v1")


async def test_a_changed_cluster_with_the_same_endpoints_warms_at_once(stack: Stack) -> None:
    """Envoy re-creates a changed cluster and waits for its endpoints again, without
    asking anew: the server must send EDS after every CDS push (else the new cluster
    sits in warming until Envoy's 15 s initial fetch timeout)."""
    first = stack.app(1, "v1")
    stack.xds.cache.set_snapshot(GROUP, first)
    await wait_for(lambda: stack.served_by("v1"), timeout=15)
    assert await wait_acked(stack.xds.registry, GROUP, full_versions(first), timeout=5)

    resources = simple_app(cluster="app-1", upstream=stack.upstreams["v1"].address,
                           listener="http", listener_port=stack.listener_port, route="routes-1")
    [cluster] = resources[CLUSTER]
    changed = cluster_pb2.Cluster()
    changed.CopyFrom(cluster)
    changed.connect_timeout.FromSeconds(7)
    resources[CLUSTER] = [changed]
    second = Snapshot.build(resources)
    assert second.version(ENDPOINT) == first.version(ENDPOINT)
    stack.xds.cache.set_snapshot(GROUP, second)

    def warmed() -> bool:
        active = stack.envoy.config_dump("dynamic_active_clusters")["configs"]
        return [c["cluster"]["connect_timeout"] for c in active] == ["7s"]

    await wait_for(warmed, timeout=SWITCH_DEADLINE * 2, message="the changed cluster active")
    assert await stack.served_by("v1")
