"""Proxies that misbehave on the xDS port of a running `controlplane serve`.

A proxy flapping its connection, and hostile or broken requests: unknown type URLs,
huge resource-name lists, wrong nonces, garbage bytes, streams that never read. The
server answers with a gRPC status or ignores them; it never crashes, its registry and
memory return to where they were, and a normal client still gets its config.

Memory is the serve's RSS from /proc, compared with a baseline taken in the same test
after a warm-up, within a generous bound: no absolute figures, no timing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER
from tests.e2e.test_backbone import apply, edge_yaml
from tests.reliability.conftest import Figures
from tests.support.ads import AdsClient, node
from tests.support.controlplane import ServeProcess, cli
from tests.support.ports import free_port
from tests.support.wait import wait_for

pytestmark = [pytest.mark.reliability]

FLAPS = 100
RSS_SLACK = 1.25  # RSS may end at most 25% above its warmed-up baseline (+ a few MB)
RSS_SLACK_MB = 16
ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("cp")).start()
    try:
        apply(proc, edge_yaml(port=free_port(), v1=free_port(), v2=free_port()))
        yield proc
    finally:
        proc.stop()


def rss_mb(cp: ServeProcess) -> float:
    assert cp.proc is not None
    for line in Path(f"/proc/{cp.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def proxies(cp: ServeProcess) -> list[dict[str, Any]]:
    result = cli(["get", "proxies", "-o", "json"], server=cp.admin)
    assert result.code == 0, result.err
    items: list[dict[str, Any]] = json.loads(result.out)["items"]
    return items


async def count_proxies(cp: ServeProcess) -> int:
    return len(await asyncio.to_thread(proxies, cp))


def alive(cp: ServeProcess) -> None:
    assert cp.proc is not None and cp.proc.poll() is None, cp.log()


async def gets_config(cp: ServeProcess, node_id: str = "normal", *, delta: bool = False) -> None:
    """A well-behaved client receives the group's listener (SotW or Delta)."""
    async with AdsClient(cp.xds, delta=delta) as client:
        if delta:
            await client.delta_request(LISTENER, node=node(node_id))
        else:
            await client.request(LISTENER, node=node(node_id))
        response = await client.recv(timeout=15)
        assert response.type_url == LISTENER and len(response.resources) == 1, response


async def one_flap(cp: ServeProcess, i: int) -> None:
    """Connect, subscribe, and go: every third without waiting for the answer."""
    async with AdsClient(cp.xds, delta=i % 2 == 1) as client:
        if client.delta:
            await client.delta_request(CLUSTER, node=node(f"flapper-{i % 7}"))
        else:
            await client.request(CLUSTER, node=node(f"flapper-{i % 7}"))
        if i % 3:
            await client.recv(timeout=15)


async def settle(cp: ServeProcess, baseline: int) -> float:
    """Wait until the registry is back to `baseline` streams; returns the seconds it took."""
    start = time.monotonic()
    await wait_for(lambda: _equal(count_proxies(cp), baseline), timeout=20, interval=0.2,
                   message=f"streams back to {baseline}")
    return time.monotonic() - start


async def _equal(got: Any, want: int) -> bool:
    return bool(await got == want)


def bounded(cp: ServeProcess, baseline_mb: float) -> float:
    now = rss_mb(cp)
    assert now <= baseline_mb * RSS_SLACK + RSS_SLACK_MB, (baseline_mb, now)
    return now


async def test_a_proxy_flapping_100_times_leaks_nothing(cp: ServeProcess, figures: Figures
                                                        ) -> None:
    streams_before = await count_proxies(cp)
    for i in range(10):  # warm-up: first-use allocations are not a leak
        await one_flap(cp, i)
    await settle(cp, streams_before)
    baseline = rss_mb(cp)
    started = time.monotonic()
    for i in range(FLAPS):
        await one_flap(cp, i)
    flaps_s = time.monotonic() - started
    settle_s = await settle(cp, streams_before)
    after = bounded(cp, baseline)
    alive(cp)
    await gets_config(cp)
    figures(flaps=FLAPS, flaps_s=flaps_s, streams_before=streams_before,
            streams_after=await count_proxies(cp), settle_s=settle_s,
            rss_baseline_mb=baseline, rss_after_mb=after)


async def test_unknown_types_huge_name_lists_and_wrong_nonces(cp: ServeProcess,
                                                              figures: Figures) -> None:
    streams_before = await count_proxies(cp)
    await gets_config(cp)
    baseline = rss_mb(cp)
    async with AdsClient(cp.xds) as client:
        # Unknown type URLs: answered empty, never an error.
        await client.request("type.googleapis.com/no.such.Type", node=node("hostile"))
        response = await client.recv(timeout=15)
        assert response.type_url == "type.googleapis.com/no.such.Type"
        assert len(response.resources) == 0
        # A huge name list (100k names, ~2.5 MB): only names that exist are answered.
        names = [f"cluster-{i:06d}-{'x' * 10}" for i in range(100_000)]
        started = time.monotonic()
        await client.request(ENDPOINT, names)
        eds = await _recv_type(client, ENDPOINT)
        huge_s = time.monotonic() - started
        assert len(eds.resources) == 0
        await client.ack(eds, names=names)
        # Wrong and stale nonces: ignored, and no NACK is recorded for them.
        await client.request(ENDPOINT, names, version="bogus", nonce="no-such-nonce",
                             error="forged NACK")
        await client.request(ENDPOINT, names, nonce="9" * 1000)
        await client.request(CLUSTER)
        cds = await _recv_type(client, CLUSTER)
        await client.request(CLUSTER, version=cds.version_info, nonce="0", error="stale")
        assert await client.silent_for(1.0)  # none of that is answered
        (me,) = [p for p in await asyncio.to_thread(proxies, cp) if p["nodeId"] == "hostile"]
        assert not any(t.get("lastNack") for t in me["types"].values()), me
        assert client.error is None
    async with AdsClient(cp.xds) as client:
        # A stream asking for 500 types: answered for the first 32 (its own loss), no more.
        await client.request(LISTENER, node=node("many-types"))
        for i in range(500):
            await client.request(f"type.googleapis.com/junk.T{i}")
        answered = 0
        while not await client.silent_for(1.0):
            await client.recv()
            answered += 1
        assert answered == 32, answered
        assert client.error is None
    async with AdsClient(cp.xds, delta=True) as client:
        # Delta: 100k names subscribed, then unsubscribed; an unknown type; a wrong nonce.
        await client.delta_request(ENDPOINT, subscribe=names, node=node("hostile-delta"))
        await client.delta_request("type.googleapis.com/no.such.Type")
        await client.delta_request(ENDPOINT, nonce="no-such-nonce", error="forged")
        await client.delta_request(ENDPOINT, unsubscribe=names)
        await client.delta_request(LISTENER)
        lds = await _recv_type(client, LISTENER)
        assert len(lds.resources) == 1
        assert client.error is None
    async with AdsClient(cp.xds) as client:
        # Past the limit on names per type: the stream ends with RESOURCE_EXHAUSTED.
        await client.request(ENDPOINT, [*names, "one-too-many"], node=node("greedy"))
        await wait_for(lambda: client.error is not None, timeout=15)
        assert client.error is not None
        refused = client.error.code()
        assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED, client.error
    settle_s = await settle(cp, streams_before)
    alive(cp)
    await gets_config(cp)
    await gets_config(cp, delta=True)
    after = bounded(cp, baseline)
    figures(huge_names=len(names), huge_answer_s=huge_s, too_many_names=refused.name,
            settle_s=settle_s,
            rss_baseline_mb=baseline, rss_after_mb=after)


async def _recv_type(client: AdsClient, type_url: str) -> Any:
    """The next response of `type_url`, skipping others (answers to junk types)."""
    async with asyncio.timeout(30):
        while True:
            response = await client.recv(timeout=30)
            if response.type_url == type_url:
                return response


@pytest.mark.parametrize("method", [ADS_METHOD, DELTA_METHOD], ids=["sotw", "delta"])
@pytest.mark.parametrize("first", [True, False], ids=["first", "after-a-request"])
async def test_garbage_bytes_get_a_grpc_status(cp: ServeProcess, method: str, first: bool,
                                               figures: Figures) -> None:
    """Bytes that are no DiscoveryRequest: the stream ends with a status, the server lives."""
    streams_before = await count_proxies(cp)
    async with grpc.aio.insecure_channel(cp.xds) as channel:
        call = channel.stream_stream(method, request_serializer=None,
                                     response_deserializer=None)()
        if not first:
            ok = (discovery_pb2.DiscoveryRequest(type_url=LISTENER, node=node("g"))
                  if method == ADS_METHOD else
                  discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER, node=node("g")))
            await call.write(ok.SerializeToString())
            assert await asyncio.wait_for(call.read(), 15)
        await call.write(b"\xff\xff\xff\xff garbage \x00\x01" * 100)
        code = await asyncio.wait_for(call.code(), 15)
        details = await call.details()
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), (code, details)
    await settle(cp, streams_before)
    alive(cp)
    await gets_config(cp)
    figures(status=code.name, details=details)


async def test_streams_that_never_read_while_config_changes(cp: ServeProcess,
                                                            figures: Figures) -> None:
    """50 streams subscribe to everything and never read while big config changes are
    pushed: normal clients are not held up, and a second round of the same ends where
    the first did (what a round costs is held while it lasts, then given back: the
    first round's high-water mark stays in the allocator, so it is the baseline)."""
    streams_before = await count_proxies(cp)
    await gets_config(cp)
    start_mb = rss_mb(cp)
    first = await stalled_round(cp, streams_before, 0)
    after_first = rss_mb(cp)
    second = await stalled_round(cp, streams_before, 1)
    after = bounded(cp, after_first)
    figures(stalled_streams=STALLED, changes=CHANGES, rss_start_mb=start_mb,
            rss_peak_first_mb=first[0], rss_after_first_mb=after_first,
            rss_peak_second_mb=second[0], rss_after_second_mb=after,
            pushes_s=first[1] + second[1])
    assert cli(["delete", "route", "big"], server=cp.admin).code == 0
    assert cli(["delete", "upstream", "big"], server=cp.admin).code == 0


STALLED, CHANGES = 50, 10


async def stalled_round(cp: ServeProcess, streams_before: int, n: int) -> tuple[float, float]:
    """STALLED streams that never read while CHANGES big pushes go out, then closed;
    returns (peak RSS MB, seconds the pushes took)."""
    stalled = [AdsClient(cp.xds, read=False, delta=i % 2 == 1) for i in range(STALLED)]
    try:
        for i, client in enumerate(stalled):
            await client.__aenter__()
            for type_url in (CLUSTER, LISTENER):
                if client.delta:
                    await client.delta_request(type_url, node=node(f"stalled-{i}"))
                else:
                    await client.request(type_url, node=node(f"stalled-{i}"))
            # Requests keep coming from a client that reads nothing.
            for j in range(20):
                names = [f"x{j}-{k}" for k in range(1000)]
                if client.delta:
                    await client.delta_request(ENDPOINT, subscribe=names)
                else:
                    await client.request(ENDPOINT, names)
        await wait_for(lambda: _at_least(count_proxies(cp), streams_before + STALLED),
                       timeout=30, interval=0.2, message="the stalled streams are connected")
        peak = connected = rss_mb(cp)
        started = time.monotonic()
        for change in range(CHANGES):  # each change: a ~4,000-endpoint cluster to everyone
            endpoints = ", ".join(f'"127.0.{n}.{1 + change}:{p}"' for p in range(1000, 5000))
            apply(cp, f"""
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: big}}
spec:
  active: v1
  versions:
    v1: {{endpoints: [{endpoints}]}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: big}}
spec: {{listener: edge-http, prefix: /big, upstream: big}}
""")
            await gets_config(cp, f"normal-{change}")  # not held up by the stalled ones
            peak = max(peak, rss_mb(cp))
            if change == 1:
                early = peak
        pushes_s = time.monotonic() - started
        print(f"stalled round {n}: RSS {connected:.1f} MB connected, peak after 2 changes "
              f"{early:.1f} MB, after {CHANGES} {peak:.1f} MB")
        # What stalled streams hold does not grow with the pushes they do not read.
        assert peak <= early * RSS_SLACK + RSS_SLACK_MB, (early, peak)
        alive(cp)
    finally:
        for client in stalled:
            await client.close()
    await settle(cp, streams_before)
    return peak, pushes_s


async def _at_least(got: Any, want: int) -> bool:
    return bool(await got >= want)
