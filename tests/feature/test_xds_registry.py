"""The proxy registry: who is connected, what they ACKed, and no leak over reconnects."""

from __future__ import annotations

import asyncio

import grpc
from envoy.config.core.v3 import base_pb2

from controlplane.xds.resources import CLUSTER, ENDPOINT
from controlplane.xds.snapshot import Snapshot
from tests.support.acks import ack_progress, has_acked, wait_acked
from tests.support.ads import AdsClient, node, xds_server
from tests.support.wait import wait_for
from tests.support.xds_resources import eds_cluster, endpoints, resources


def big_snapshot(n: int, port: int = 1) -> Snapshot:
    names = [f"cluster-{i:04d}" for i in range(n)]
    return Snapshot.build(resources(
        clusters=[eds_cluster(c) for c in names],
        endpoints=[endpoints(c, [("127.0.0.1", port)]) for c in names],
    ))


async def test_fifty_streams_are_removed_after_disconnect() -> None:
    async with xds_server() as xds:
        xds.cache.set_snapshot("edge", big_snapshot(20))

        async def one(i: int, delta: bool) -> None:
            async with AdsClient(xds.target, delta=delta) as client:
                if delta:
                    await client.delta_request(CLUSTER, node=node(f"p{i}"))
                else:
                    await client.request(CLUSTER, node=node(f"p{i}"))
                await client.recv()

        await asyncio.gather(*(one(i, i % 2 == 0) for i in range(50)))
        await wait_for(lambda: len(xds.registry) == 0, timeout=10)


async def test_client_gone_mid_send_does_not_hurt_the_server() -> None:
    async with xds_server() as xds:
        xds.cache.set_snapshot("edge", big_snapshot(5000))
        for i in range(5):
            # Ask for ~1 MB, read nothing (the server's write stalls on flow control), hang up.
            async with AdsClient(xds.target, read=False) as client:
                await client.request(CLUSTER, node=node(f"gone-{i}"))
                await wait_for(lambda: any(p.types and p.types[0].responses
                                           for p in xds.registry.list()))
        await wait_for(lambda: len(xds.registry) == 0, timeout=10)
        async with AdsClient(xds.target) as client:
            await client.request(CLUSTER, node=node("survivor"))
            assert len((await client.recv()).resources) == 5000


async def test_wait_acked_counts_the_whole_group() -> None:
    async with xds_server() as xds:
        first = big_snapshot(2, port=1)
        xds.cache.set_snapshot("edge", first)
        want = {CLUSTER: first.version(CLUSTER), ENDPOINT: first.version(ENDPOINT)}
        assert not await wait_acked(xds.registry, "edge", want, timeout=0.1)  # nobody connected
        async with AdsClient(xds.target) as p1, AdsClient(xds.target) as p2:
            for i, client in enumerate((p1, p2)):
                await client.request(CLUSTER, node=node(f"p{i}"))
                await client.ack(await client.recv())
                await client.request(ENDPOINT, ["cluster-0000", "cluster-0001"])
            waiter = asyncio.create_task(wait_acked(xds.registry, "edge", want, timeout=5))
            eds1 = await p1.recv()
            await p1.ack(eds1, names=["cluster-0000", "cluster-0001"])
            await wait_for(lambda: has_acked(xds.registry.list()[0], want))
            assert ack_progress(xds.registry, "edge", want) == (1, 2)
            assert not waiter.done()  # p2 has not ACKed EDS yet
            await p2.ack(await p2.recv(), names=["cluster-0000", "cluster-0001"])
            assert await waiter
            assert ack_progress(xds.registry, "edge", want) == (2, 2)
            statuses = xds.registry.list("edge")
            assert [p.node_id for p in statuses] == ["p0", "p1"]
            assert all(p.peer.startswith("ipv4:127.0.0.1") for p in statuses)
        await wait_for(lambda: len(xds.registry) == 0)


async def test_refused_group_aborts_the_stream() -> None:
    from controlplane.errors import PermissionDeniedError

    def only_edge(n: object, context: object) -> str:
        raise PermissionDeniedError("certificate names no group")

    async with xds_server(group_of=only_edge) as xds:
        async with AdsClient(xds.target) as client:
            await client.request(CLUSTER, node=node())
            await wait_for(lambda: client.error is not None)
            assert client.error.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[union-attr]
        assert len(xds.registry) == 0


async def test_garbage_bytes_end_only_that_stream() -> None:
    async with xds_server() as xds:
        xds.cache.set_snapshot("edge", big_snapshot(3))
        async with grpc.aio.insecure_channel(xds.target) as channel:
            call = channel.stream_stream(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
            )()
            await call.write(b"\xff\xff\xff\x01garbage")
            assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        async with AdsClient(xds.target) as client:
            await client.request(CLUSTER, node=node())
            assert len((await client.recv()).resources) == 3
        await wait_for(lambda: len(xds.registry) == 0)


async def test_extension_names_are_read_per_build_and_shared() -> None:
    def envoy(node_id: str, extensions: list[str]) -> base_pb2.Node:
        n = node(node_id)
        n.user_agent_name = "envoy"
        n.extensions.extend(base_pb2.Extension(name=e, category="envoy.filters.http")
                            for e in extensions)
        return n

    common = [f"envoy.filters.http.ext_{i:03d}" for i in range(500)]
    async with xds_server() as xds:
        xds.cache.set_snapshot("edge", big_snapshot(1))
        async with AdsClient(xds.target) as a, AdsClient(xds.target) as b, \
                AdsClient(xds.target) as c:
            await a.request(CLUSTER, node=envoy("a", common))
            await b.request(CLUSTER, node=envoy("b", common))
            await c.request(CLUSTER, node=envoy("c", [*common[:-1], "envoy.filters.http.mine"]))
            for client in (a, b, c):
                await client.recv()
            by_id = {p.node_id: p.extensions for p in xds.registry.list()}
    assert by_id["a"] == frozenset(common) and by_id["a"] is by_id["b"]  # one copy
    assert "envoy.filters.http.mine" in by_id["c"]
    assert common[-1] not in by_id["c"]


async def test_end_streams_aborts_the_chosen_streams_only() -> None:
    async with xds_server() as xds:
        xds.cache.set_snapshot("edge", big_snapshot(1))
        async with AdsClient(xds.target) as doomed, AdsClient(xds.target) as kept:
            for client, name in ((doomed, "doomed"), (kept, "kept")):
                await client.request(CLUSTER, node=node(name))
                await client.ack(await client.recv())
            ended = xds.registry.end_streams(lambda h: h.node_id == "doomed",
                                             "its client certificate was revoked")
            assert ended == 1
            await wait_for(lambda: doomed.error is not None)
            assert doomed.error is not None
            assert doomed.error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "revoked" in (doomed.error.details() or "")
            await wait_for(lambda: [p.node_id for p in xds.registry.list()] == ["kept"])
            xds.cache.set_snapshot("edge", big_snapshot(2))  # the other is still served
            assert len((await kept.recv()).resources) == 2
