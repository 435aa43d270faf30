"""Clients that try to make the control plane hold more and more: memory, /metrics and
the log stay bounded, and a real Envoy keeps getting its updates meanwhile.

Each abuse runs against a `controlplane serve` with a real Envoy of the configured group
`edge`; during it, a change of the active version is applied and must reach requests
through that Envoy. Memory is the serve's RSS from /proc, compared with a baseline taken
in the same test after a warm-up round of the same abuse, within generous bounds: no
absolute figures, no timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import yaml

from controlplane.xds.resources import LISTENER
from tests.e2e.test_backbone import apply, edge_yaml, version_behind
from tests.reliability.conftest import Figures
from tests.reliability.test_xds_hostile import RSS_SLACK, RSS_SLACK_MB, rss_mb
from tests.support.ads import AdsClient, node
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy, start_envoy
from tests.support.http import get_sync
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for

pytestmark = [pytest.mark.reliability]

GROUP_ROUNDS, GROUP_BATCH = 8, 100
FRESH = "fresh-group-" + "g" * 200  # node.cluster is at most 256 bytes


def metrics(cp: ServeProcess) -> str:
    response = get_sync(cp.metrics_port, "/metrics", timeout=10)
    assert response.status == 200
    return response.text


def log_bytes(cp: ServeProcess) -> int:
    assert cp.log_path is not None
    return cp.log_path.stat().st_size


@contextlib.asynccontextmanager
async def edge_envoy(cp: ServeProcess, upstream_factory: Callable[..., Upstream],
                     envoy_factory: Callable[..., Envoy]) -> AsyncIterator[Callable[[str], None]]:
    """The configured group `edge` served to a real Envoy on v1; yields `switch(version)`,
    which applies `version` as active and waits until requests through Envoy reach it."""
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(cp, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    envoy_factory(cp, "edge-1", "edge")
    lands = version_behind(port, timeout=30)
    await asyncio.to_thread(lands, "v1")

    def switch(version: str) -> None:
        apply(cp, edge_yaml(port=port, v1=v1.port, v2=v2.port, active=version))
        lands(version)

    yield switch


async def fresh_group_round(cp: ServeProcess, first: int) -> int:
    """GROUP_BATCH streams at once, each for a group nobody configured, each answered and
    closed; returns how many were refused (RESOURCE_EXHAUSTED) instead of answered."""
    async def one(i: int) -> bool:
        async with AdsClient(cp.xds) as client:
            await client.request(LISTENER, node=node(f"p{i}", group=f"{FRESH}-{i}"))
            got = await wait_for(lambda: client.error or client._responses.qsize(),
                                 timeout=30, message=f"stream {i} answered or refused")
            return isinstance(got, grpc.RpcError)
    refused = await asyncio.gather(*(one(first + i) for i in range(GROUP_BATCH)))
    return sum(refused)


async def test_groups_named_by_clients_are_forgotten(
        serve: ServeProcess, upstream_factory: Callable[..., Upstream],
        envoy_factory: Callable[..., Envoy], figures: Figures) -> None:
    async with edge_envoy(serve, upstream_factory, envoy_factory) as switch:
        await fresh_group_round(serve, 0)  # warm-up: first-use allocations are no leak
        await wait_for(lambda: FRESH not in metrics(serve), timeout=20,
                       message="the warm-up's groups leave /metrics")
        baseline_mb, baseline_metrics = rss_mb(serve), len(metrics(serve))
        refused = 0
        for r in range(1, GROUP_ROUNDS + 1):
            if r == GROUP_ROUNDS // 2:  # a change made during the abuse reaches Envoy
                switching = asyncio.create_task(asyncio.to_thread(switch, "v2"))
            refused += await fresh_group_round(serve, r * GROUP_BATCH)
        await switching
        # Forgotten once their streams are gone: no label of theirs stays on /metrics.
        await wait_for(lambda: FRESH not in metrics(serve), timeout=20,
                       message="the abusers' groups leave /metrics")
        after_metrics = len(metrics(serve))
        assert after_metrics <= baseline_metrics + 4096, (baseline_metrics, after_metrics)
        after_mb = rss_mb(serve)
        assert after_mb <= baseline_mb * RSS_SLACK + RSS_SLACK_MB, (baseline_mb, after_mb)
        assert "edge" in metrics(serve)  # the configured group is kept
        await asyncio.to_thread(switch, "v1")
    figures(groups=GROUP_ROUNDS * GROUP_BATCH, refused=refused, rss_baseline_mb=baseline_mb,
            rss_after_mb=after_mb, metrics_baseline=baseline_metrics,
            metrics_after=after_metrics)


FAKE_NAMES = 99_000
FLOODS = 10
LOG_SLACK = 64 * 1024  # bytes of log the whole abuse may add (one flood logged: MBs)


def fake_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:06d}-{'s' * 16}" for i in range(count)]


async def sds_flood(cp: ServeProcess, i: int) -> tuple[grpc.StatusCode, grpc.StatusCode]:
    """One SotW SDS stream and one FetchSecrets, each naming FAKE_NAMES secrets; returns
    the status each ended with."""
    from envoy.service.discovery.v3 import discovery_pb2
    from envoy.service.secret.v3 import sds_pb2_grpc

    from controlplane.xds.resources import SECRET

    names = fake_names(f"flood{i}", FAKE_NAMES)
    async with grpc.aio.insecure_channel(cp.xds, options=[
            ("grpc.max_send_message_length", 16 * 1024 * 1024)]) as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        call = stub.StreamSecrets()
        await call.write(discovery_pb2.DiscoveryRequest(
            node=node(f"flood-{i}"), type_url=SECRET, resource_names=names))
        streamed = await asyncio.wait_for(call.code(), 30)
        try:
            await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(
                node=node(f"flood-{i}"), type_url=SECRET, resource_names=names), timeout=30)
            fetched = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            fetched = exc.code()
        # Under the cap: answered (empty), and the names logged once, briefly.
        await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(
            node=node(f"flood-{i}"), type_url=SECRET,
            resource_names=fake_names(f"small{i}", 900)), timeout=30)
    return streamed, fetched


async def test_sds_requests_for_99k_fake_names(
        serve: ServeProcess, upstream_factory: Callable[..., Upstream],
        envoy_factory: Callable[..., Envoy], figures: Figures) -> None:
    async with edge_envoy(serve, upstream_factory, envoy_factory) as switch:
        await sds_flood(serve, 0)  # warm-up
        baseline_mb, baseline_log = rss_mb(serve), log_bytes(serve)
        switching = asyncio.create_task(asyncio.to_thread(switch, "v2"))
        codes = [await sds_flood(serve, i) for i in range(1, FLOODS + 1)]
        await switching
        assert all(c == (grpc.StatusCode.RESOURCE_EXHAUSTED,) * 2 for c in codes), codes
        added_log = log_bytes(serve) - baseline_log
        assert added_log <= LOG_SLACK, added_log
        after_mb = rss_mb(serve)
        assert after_mb <= baseline_mb * RSS_SLACK + RSS_SLACK_MB, (baseline_mb, after_mb)
        await asyncio.to_thread(switch, "v1")
    figures(floods=FLOODS, names=FAKE_NAMES, log_added_bytes=added_log,
            rss_baseline_mb=baseline_mb, rss_after_mb=after_mb)


ROUND_NAMES, MAX_ROUNDS = 900, 40


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_fresh_secret_names_every_round(
        serve: ServeProcess, upstream_factory: Callable[..., Upstream],
        envoy_factory: Callable[..., Envoy], delta: bool, figures: Figures) -> None:
    """One stream naming ROUND_NAMES new secrets each round, for ever: it ends with
    RESOURCE_EXHAUSTED, having logged a few lines, not one per name."""
    from controlplane.xds.resources import SECRET

    async with edge_envoy(serve, upstream_factory, envoy_factory) as switch:
        baseline_mb, baseline_log = rss_mb(serve), log_bytes(serve)
        switching = asyncio.create_task(asyncio.to_thread(switch, "v2"))
        rounds, previous = 0, list[str]()
        async with AdsClient(serve.xds, delta=delta) as client:
            while client.error is None and rounds < MAX_ROUNDS:
                names = fake_names(f"round{rounds}", ROUND_NAMES)
                first = node("churner") if rounds == 0 else None
                if delta:  # the last round's names dropped: the subscription stays small
                    await client.delta_request(SECRET, subscribe=names, node=first,
                                               unsubscribe=previous)
                else:
                    await client.request(SECRET, names, node=first)
                rounds, previous = rounds + 1, names
                await wait_for(lambda: client.error or client._responses.qsize(),
                               timeout=30, message=f"round {rounds} answered or refused")
                while client._responses.qsize():
                    await client.recv()
            assert client.error is not None, f"still served after {rounds} rounds"
            assert client.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, client.error
        await switching
        added_log = log_bytes(serve) - baseline_log
        assert added_log <= LOG_SLACK, added_log
        after_mb = rss_mb(serve)
        assert after_mb <= baseline_mb * RSS_SLACK + RSS_SLACK_MB, (baseline_mb, after_mb)
    figures(rounds=rounds, names_per_round=ROUND_NAMES, log_added_bytes=added_log,
            rss_baseline_mb=baseline_mb, rss_after_mb=after_mb)


PEER_CAP, GREEDY_TRIES = 5, 30


async def refusal(client: AdsClient) -> grpc.StatusCode:
    """The status a stream ends with before it sends anything: a stream past its peer's
    cap is refused as it opens (a request written then could fail on the client's side
    first, with a status of its own)."""
    code: grpc.StatusCode = await asyncio.wait_for(client._call.code(), 15)
    return code


def _credentials(tls: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.crt").read_bytes(),
        private_key=(tls / "proxy.key").read_bytes(),
        certificate_chain=(tls / "proxy.crt").read_bytes())


async def test_one_peer_cannot_take_every_stream(
        tmp_path: Path, upstream_factory: Callable[..., Upstream], figures: Figures) -> None:
    """Under mTLS a peer is a client certificate: one past its cap is refused, while a
    real Envoy with its own certificate keeps getting its updates."""
    cp = ServeProcess(tmp_path / "cp", extra_args=(
        "--tls-dir", str(tmp_path / "server-tls"),
        "--max-streams-per-peer", str(PEER_CAP))).start()
    envoy: Envoy | None = None
    greedy: list[AdsClient] = []
    try:
        v1, v2 = upstream_factory("v1"), upstream_factory("v2")
        port = free_port()
        apply(cp, edge_yaml(port=port, v1=v1.port, v2=v2.port))
        tls = {}
        for who in ("envoy", "greedy"):
            tls[who] = tmp_path / f"{who}-tls"
            issued = cli(["cert", "issue", "--group", "edge", "--out", str(tls[who])],
                         server=cp.admin)
            assert issued.code == 0, issued.err
        boot = cli(["bootstrap", "--node-id", "edge-1", "--group", "edge",
                    "--admin-port", str(free_port()), "--xds-addr", cp.xds,
                    "--tls-dir", str(tls["envoy"])])
        assert boot.code == 0, boot.err
        envoy = start_envoy(yaml.safe_load(boot.out), tmp_path / "envoy")
        lands = version_behind(port, timeout=30)
        await asyncio.to_thread(lands, "v1")
        log_before = log_bytes(cp)

        for i in range(PEER_CAP):  # the greedy certificate's whole share, held
            client = AdsClient(cp.xds, credentials=_credentials(tls["greedy"]))
            greedy.append(client)
            await client.__aenter__()
            await client.request(LISTENER, node=node(f"greedy-{i}"))
            await client.recv(timeout=15)
        refused = 0
        for _ in range(GREEDY_TRIES):  # one more, again and again: refused each time
            async with AdsClient(cp.xds, credentials=_credentials(tls["greedy"])) as extra:
                code = await refusal(extra)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, code
                refused += 1
        # The other certificate's Envoy is still served: a change reaches it.
        apply(cp, edge_yaml(port=port, v1=v1.port, v2=v2.port, active="v2"))
        await asyncio.to_thread(lands, "v2")
        refusal_lines = cp.log().count("per peer)")
        assert 1 <= refusal_lines <= 2, refusal_lines  # rate-limited, not one per try
        added_log = log_bytes(cp) - log_before
        assert added_log <= LOG_SLACK, added_log
    finally:
        for client in greedy:
            await client.close()
        if envoy is not None:
            envoy.stop()
        cp.stop()
    figures(cap=PEER_CAP, refused=refused, refusal_log_lines=refusal_lines,
            log_added_bytes=added_log)
