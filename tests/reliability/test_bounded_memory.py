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

import grpc
import pytest

from controlplane.xds.resources import LISTENER
from tests.e2e.test_backbone import apply, edge_yaml, version_behind
from tests.reliability.conftest import Figures
from tests.reliability.test_xds_hostile import RSS_SLACK, RSS_SLACK_MB, rss_mb
from tests.support.ads import AdsClient, node
from tests.support.controlplane import ServeProcess
from tests.support.envoy import Envoy
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
