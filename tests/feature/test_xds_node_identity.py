"""A proxy is (group, node id): streams that reuse a node id cannot hide or replace
another proxy's state, and oversized identities are refused before anything holds them."""

from __future__ import annotations

import grpc
import pytest
from envoy.config.core.v3 import base_pb2

from controlplane.errors import PermissionDeniedError
from controlplane.xds.proxies import MAX_NACK_TEXT, ProxyRegistry, ProxyStatus
from controlplane.xds.resources import CLUSTER
from controlplane.xds.stream import MAX_IDENTITY_BYTES
from tests.feature.test_xds_registry import big_snapshot
from tests.support.ads import AdsClient, node, xds_server
from tests.support.wait import wait_for

HUGE = "x" * (2 * 1024 * 1024)


async def subscribe(client: AdsClient, who: base_pb2.Node) -> None:
    """The stream's first request: every cluster, as `who`."""
    if client.delta:
        await client.delta_request(CLUSTER, node=who)
    else:
        await client.request(CLUSTER, node=who)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize("field", ["id", "cluster"])
async def test_an_identity_over_the_limit_is_refused_and_not_registered(
        delta: bool, field: str) -> None:
    async with xds_server() as xds:
        xds.cache.set_snapshot("edge", big_snapshot(1))
        claimed = node(HUGE) if field == "id" else node("p1", group=HUGE)
        async with AdsClient(xds.target, delta=delta) as client:
            await subscribe(client, claimed)
            await wait_for(lambda: client.error is not None)
            assert client.error is not None
            assert client.error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"node.{field} is {len(HUGE)} bytes: at most {MAX_IDENTITY_BYTES}" in (
                client.error.details() or "")
        assert len(xds.registry) == 0
        # Exactly at the limit is a proxy like any other.
        async with AdsClient(xds.target, delta=delta) as client:
            await subscribe(client, node("n" * MAX_IDENTITY_BYTES))
            assert len((await client.recv()).resources) == 1


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_the_same_node_id_in_another_group_is_another_proxy(delta: bool) -> None:
    async with xds_server() as xds:
        for group in ("edge", "other"):
            xds.cache.set_snapshot(group, big_snapshot(1))
        async with AdsClient(xds.target, delta=delta) as real, \
                AdsClient(xds.target, delta=delta) as twin:
            await subscribe(real, node("p1", "edge"))
            first = await real.recv()
            if delta:
                await real.delta_request(CLUSTER, nonce=first.nonce, error="bad cluster")
            else:
                await real.request(CLUSTER, version="", nonce=first.nonce, error="bad cluster")
            await subscribe(twin, node("p1", "other"))
            await twin.ack(await twin.recv())
            def by_group() -> dict[str, ProxyStatus]:
                return {p.group: p for p in xds.registry.list()}

            await wait_for(lambda: len(by_group()) == 2 and all(
                (t := p.type(CLUSTER)) is not None and (t.acked_version or t.last_nack)
                for p in by_group().values()))
            assert by_group()["edge"].type(CLUSTER).last_nack == "bad cluster"  # not hidden
            assert by_group()["other"].type(CLUSTER).acked_version is not None
            assert real.error is None and twin.error is None


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_second_stream_of_the_same_proxy_replaces_the_first(delta: bool) -> None:
    async with xds_server() as xds:
        xds.cache.set_snapshot("edge", big_snapshot(1))
        async with AdsClient(xds.target, delta=delta) as old, \
                AdsClient(xds.target, delta=delta) as new:
            for client in (old, new):
                await subscribe(client, node("p1"))
                await client.ack(await client.recv())
            await wait_for(lambda: old.error is not None)
            assert old.error is not None and old.error.code() == grpc.StatusCode.ABORTED
            assert "replaced" in (old.error.details() or "")
            await wait_for(lambda: len(xds.registry) == 1)
            [proxy] = xds.registry.list()
            xds.cache.set_snapshot("edge", big_snapshot(2))  # the newer one is served
            assert (await new.recv()).resources
            assert new.error is None
            assert proxy.node_id == "p1"


def test_another_certificate_cannot_take_over_a_connected_node_id() -> None:
    registry = ProxyRegistry()
    ended: list[tuple[str, str]] = []
    held = registry.connect(node_id="p1", group="edge", protocol="sotw", peer_serial="aa")
    held.on_end = lambda reason, why: ended.append((reason, why))
    with pytest.raises(PermissionDeniedError, match="another client certificate"):
        registry.connect(node_id="p1", group="edge", protocol="sotw", peer_serial="bb")
    with pytest.raises(PermissionDeniedError):
        registry.connect(node_id="p1", group="edge", protocol="sotw", peer_serial="")
    assert [h.stream_id for h in registry.handles()] == [held.stream_id] and not ended
    # The same certificate reconnecting (its old connection not dead yet) takes over.
    again = registry.connect(node_id="p1", group="edge", protocol="sotw", peer_serial="aa")
    assert [h.stream_id for h in registry.handles()] == [again.stream_id]
    assert ended and ended[0][1] == "replaced"
    held.close()  # the replaced stream ending later does not drop its successor
    assert [h.stream_id for h in registry.handles()] == [again.stream_id]
    again.close()
    # Once the holder is gone, another certificate may use the id.
    registry.connect(node_id="p1", group="edge", protocol="sotw", peer_serial="bb")


def test_a_nack_message_is_bounded() -> None:
    handle = ProxyRegistry().connect(node_id="p1", group="edge", protocol="sotw")
    handle.nacked(CLUSTER, "v1", "e" * 1_000_000)
    assert len(handle.nacks()[CLUSTER][1]) == MAX_NACK_TEXT
