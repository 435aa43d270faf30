"""What one xDS stream may make the server hold: bounded names per type, queued requests."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from controlplane.xds.budget import PushBudget
from controlplane.xds.resources import CLUSTER, ENDPOINT
from controlplane.xds.stream import MAX_NAMES_PER_TYPE
from tests.feature.test_xds_sotw import app
from tests.support.ads import AdsClient, XdsHarness, node, xds_server
from tests.support.wait import wait_for


@pytest.fixture
async def xds() -> XdsHarness:  # type: ignore[misc]
    async with xds_server() as harness:
        harness.cache.set_snapshot("edge", app())
        yield harness


async def test_sotw_request_with_too_many_names_ends_the_stream(xds: XdsHarness) -> None:
    async with AdsClient(xds.target) as client:
        await client.request(ENDPOINT, [f"c{i}" for i in range(MAX_NAMES_PER_TYPE)],
                             node=node())
        assert (await client.recv()).type_url == ENDPOINT  # at the limit: answered
        await client.request(ENDPOINT, [f"c{i}" for i in range(MAX_NAMES_PER_TYPE + 1)])
        await wait_for(lambda: client.error is not None, timeout=5)
        assert client.error is not None
        assert client.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(MAX_NAMES_PER_TYPE) in (client.error.details() or "")
    await wait_for(lambda: xds.registry.list() == [], timeout=5)


async def test_delta_subscription_growing_past_the_limit_ends_the_stream(
    xds: XdsHarness,
) -> None:
    half = MAX_NAMES_PER_TYPE // 2
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(ENDPOINT, subscribe=[f"a{i}" for i in range(half)],
                                   node=node())
        await client.recv()
        await client.delta_request(ENDPOINT, subscribe=[f"b{i}" for i in range(half)])
        await client.recv()  # exactly at the limit: still served
        await client.delta_request(ENDPOINT, unsubscribe=["a0"], subscribe=["c0"])
        await client.delta_request(ENDPOINT, subscribe=["c1"])  # one too many
        await wait_for(lambda: client.error is not None, timeout=5)
        assert client.error is not None
        assert client.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await wait_for(lambda: xds.registry.list() == [], timeout=5)


async def test_streams_past_the_server_cap_are_refused_until_one_closes() -> None:
    async with xds_server(max_streams=2) as small:
        small.cache.set_snapshot("edge", app())
        async with AdsClient(small.target) as first, AdsClient(small.target) as second:
            for i, client in enumerate((first, second)):
                await client.request(ENDPOINT, ["a"], node=node(f"p{i}"))
                assert (await client.recv()).type_url == ENDPOINT
            async with AdsClient(small.target) as third:  # never even identifies
                await wait_for(lambda: third.error is not None, timeout=5)
                assert third.error is not None
                assert third.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "at most 2" in (third.error.details() or "")
        await wait_for(lambda: small.registry.list() == [], timeout=5)
        async with AdsClient(small.target) as later:  # slots come back
            await later.request(ENDPOINT, ["a"], node=node("p3"))
            assert (await later.recv()).type_url == ENDPOINT


async def test_with_a_one_byte_push_budget_every_proxy_is_still_served() -> None:
    # Every response is larger than the budget, so each goes alone: slower, never stuck.
    async with xds_server(budget=PushBudget(limit=1, hold_s=60)) as tight:
        tight.cache.set_snapshot("edge", app())
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(AdsClient(tight.target))
                       for _ in range(8)]
            for i, client in enumerate(clients):
                await client.request(ENDPOINT, ["a"], node=node(f"p{i}"))
            firsts = [await client.recv() for client in clients]
            for client, first in zip(clients, firsts, strict=True):
                await client.ack(first, names=["a"])
            tight.cache.set_snapshot("edge", app(port=9002))
            pushed = [await client.recv() for client in clients]
            current = tight.cache.get("edge")
            assert current is not None
            assert {p.version_info for p in pushed} == {current.version(ENDPOINT)}


async def test_a_client_flooding_requests_is_held_back_while_its_stream_is_busy() -> None:
    """While the stream's task applies a request (here it waits for the first config; as
    well in a write the client does not read), it reads no other: gRPC's flow control
    stops the client's writes instead of the server queueing them all."""
    async with xds_server(ready=False) as xds:
        xds.cache.set_snapshot("edge", app())
        async with AdsClient(xds.target) as client:
            await client.request(CLUSTER, node=node("flood"))
            padding = [f"{i:04d}" + "x" * 2000 for i in range(4)]  # ~8 KB a request

            async def flood() -> None:
                for _ in range(4000):  # ~32 MB, past any HTTP/2 window
                    await client.request(CLUSTER, padding, nonce="stale")

            task = asyncio.create_task(flood())
            try:
                done, _ = await asyncio.wait([task], timeout=3)
                assert not done, "the server read every request while its stream was busy"
                xds.cache.mark_ready()  # the stream works through them: the client goes on
                await asyncio.wait_for(task, timeout=30)
            finally:
                task.cancel()
                await asyncio.wait([task])
            first = await client.recv()
            assert first.type_url == CLUSTER
