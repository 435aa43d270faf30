"""Rollouts judged by analysis end to end: real `controlplane serve`, real Envoy pushing
its stats to the control plane's MetricsService, real traffic, no operator."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from controlplane.xds.resources import CLUSTER
from tests.e2e.test_backbone import CONVERGE_S, FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.e2e.test_rollout import Load, rollout_yaml, status, wait_status
from tests.support.ads import AdsClient, node
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.http import get_sync
from tests.support.ports import free_port
from tests.support.promapi import PromApi
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

ANALYSIS = ("  analysis: {minRequests: 10, successRate: 0.95, failureLimit: 2, "
            "inconclusive: pause}\n")
STEPS = "[10, 50, 100]"
INTERVAL = "2s"
INTERVAL_S = 2.0
DECIDE_S = 40.0  # three 2 s steps, each after an ACK, with a 1 s stats flush


Edge = tuple[int, Upstream, Upstream]


@pytest.fixture
def make_edge(serve: ServeProcess, envoy_factory: Callable[..., Envoy]
              ) -> Iterator[Callable[..., Edge]]:
    started: list[Upstream] = []

    def make(**v2_options: float) -> Edge:
        v1 = Upstream("v1").start_in_thread()
        v2 = Upstream("v2", **v2_options).start_in_thread()  # type: ignore[arg-type]
        started.extend((v1, v2))
        port = free_port()
        apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port))
        envoy_factory(serve, "edge-1", "edge")
        version_behind(port, FIRST_CONFIG_S)("v1")
        return port, v1, v2

    yield make
    for up in started:
        up.stop_thread()


def versions(port: int, n: int) -> Counter[str]:
    """Which version answered each of `n` requests, whatever its status."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        seen[get_sync(port, "/anything", timeout=2.0).json()["version"]] += 1
    return seen


def rollout_transitions(cp: ServeProcess) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = json.loads(
        cli(["audit", "-o", "json"], server=cp.admin).out)
    return [e for e in entries if e["kind"] == "Rollout"
            and str(e["action"]).startswith("rollout/")]


def test_failing_canary_rolls_back_by_itself_before_half(
    serve: ServeProcess, make_edge: Callable[..., Edge]
) -> None:
    port, _, _ = make_edge(error_ratio=0.3)
    with Load(port):
        apply(serve, rollout_yaml(steps=STEPS, interval=INTERVAL, extra=ANALYSIS))
        doc = wait_status(serve, DECIDE_S, phase="RolledBack")
    check = doc["lastCheck"]
    assert isinstance(check, dict)
    assert check["verdict"] == "failed" and check["version"] == "v2"
    assert 0.55 < check["successRate"] < 0.85, check  # 30% answered 500
    assert check["thresholds"]["successRate"] == 0.95 and check["requests"] >= 10
    assert "successRate" in str(doc["message"])
    weights = [e["after"]["weight"] for e in rollout_transitions(serve)]  # type: ignore[index]
    assert max(weights) == 10.0, weights  # never reached 50%
    assert any("analysis failed" in str(e["reason"]) for e in rollout_transitions(serve))
    wait_for_sync(lambda: versions(port, 20) == Counter({"v1": 20}), timeout=CONVERGE_S,
                  message="all traffic back on v1")
    assert versions(port, 100) == Counter({"v1": 100})
    upstream = json.loads(cli(["get", "upstream", "payments", "-o", "json"],
                              server=serve.admin).out)
    assert upstream["spec"]["active"] == "v1"


def test_no_traffic_pauses_inconclusive_and_never_rolls_back(
    serve: ServeProcess, make_edge: Callable[..., Edge]
) -> None:
    make_edge()
    apply(serve, rollout_yaml(steps=STEPS, interval=INTERVAL, extra=ANALYSIS))
    doc = wait_status(serve, DECIDE_S, phase="Paused")
    assert doc["weight"] == 10.0 and doc["failedChecks"] == 0
    assert "no data" in str(doc["message"])
    check = doc["lastCheck"]
    assert isinstance(check, dict) and check["verdict"] == "inconclusive"
    assert check["requests"] == 0
    # A step interval after the pause the engine is still deciding, and decides nothing
    # new: a proxy joining the group then is counted by its pass (a stopped engine never
    # counts it), and that pass leaves the rollout paused, with no transition since.
    since = float(doc["since"])  # type: ignore[arg-type]
    wait_for_sync(lambda: time.time() >= since + INTERVAL_S, timeout=INTERVAL_S + 1,
                  message="a step interval since the pause")
    later = asyncio.run(_counted_with_a_late_proxy(serve))
    assert later["phase"] == "Paused" and later["weight"] == 10.0, later
    assert later["failedChecks"] == 0 and later["since"] == doc["since"], later
    actions = [e["action"] for e in rollout_transitions(serve)]
    assert actions[-1] == "rollout/Paused" and "rollout/RollingBack" not in actions, actions


async def _counted_with_a_late_proxy(cp: ServeProcess) -> dict[str, object]:
    """Connect one more proxy of group `edge` (a raw ADS client) and return the first
    rollout status that counts it."""
    def counted() -> dict[str, object]:
        doc = status(cp)
        proxies = doc["proxies"]
        return doc if isinstance(proxies, dict) and proxies["total"] == 2 else {}

    async with AdsClient(cp.xds) as client:
        await client.request(CLUSTER, node=node("late-1", "edge"))
        return await asyncio.to_thread(lambda: wait_for_sync(
            counted, timeout=FIRST_CONFIG_S, message="the engine counted the late proxy"))


def test_healthy_canary_is_promoted_to_full_without_an_operator(
    serve: ServeProcess, make_edge: Callable[..., Edge]
) -> None:
    port, _, _ = make_edge()
    with Load(port) as load:
        apply(serve, rollout_yaml(steps=STEPS, interval=INTERVAL, extra=ANALYSIS))
        doc = wait_status(serve, DECIDE_S, phase="Succeeded", weight=100.0)
        version_behind(port, CONVERGE_S)("v2")
    assert load.failures == []
    check = doc["lastCheck"]
    assert isinstance(check, dict) and check["verdict"] == "passed"
    assert check["successRate"] == 1.0 and check["requests"] >= 10
    transitions = rollout_transitions(serve)
    assert all(str(e["actor"]).startswith("engine:") for e in transitions)
    assert sum("analysis passed" in str(e["reason"]) for e in transitions) == 2  # 10→50→100


@pytest.mark.parametrize(
    ("v2_options", "threshold", "words"),
    [
        pytest.param({"error_ratio": 0.2, "error_status": 403}, "authFailureRate: 0.05",
                     "authFailureRate", id="403s"),
        pytest.param({"latency_s": 0.2}, "p99LatencyMs: 100", "p99 latency", id="slow"),
    ],
)
def test_auth_failures_or_latency_roll_back(
    serve: ServeProcess, make_edge: Callable[..., Edge], v2_options: dict[str, float],
    threshold: str, words: str,
) -> None:
    port, _, _ = make_edge(**v2_options)
    analysis = (f"  analysis: {{minRequests: 5, successRate: 0.95, {threshold}, "
                "failureLimit: 1, inconclusive: continue}\n")
    with Load(port), Load(port), Load(port):  # a slow v2 holds each client back
        apply(serve, rollout_yaml(steps=STEPS, interval=INTERVAL, extra=analysis))
        doc = wait_status(serve, DECIDE_S, phase="RolledBack")
    check = doc["lastCheck"]
    assert isinstance(check, dict) and check["verdict"] == "failed", check
    assert words in str(check["detail"])
    assert check["successRate"] == 1.0  # neither 403 nor slowness is a 5xx
    if "latency_s" in v2_options:
        assert check["p99LatencyMs"] >= 200, check
    else:
        assert 0.1 < check["authFailureRate"] < 0.3, check


def test_bluegreen_is_judged_before_and_after_its_switch(
    serve: ServeProcess, make_edge: Callable[..., Edge]
) -> None:
    port, _, v2 = make_edge()
    with Load(port):
        # Before the switch v2 gets a mirrored copy of every request (responses dropped)
        # and is judged on those; after it, on the real traffic, for the rollback window.
        apply(serve, rollout_yaml(interval=INTERVAL, extra=ANALYSIS + (
            "  strategy: bluegreen\n  mirror: {percent: 100}\n  rollbackWindow: 1h\n")))
        doc = wait_status(serve, DECIDE_S, phase="Succeeded", weight=100.0)
        assert doc["fromRetained"] is True
        check = doc["lastCheck"]
        assert isinstance(check, dict) and check["verdict"] == "passed"
        version_behind(port, CONVERGE_S)("v2")
        v2.error_ratio = 0.5  # goes bad after the switch
        doc = wait_status(serve, DECIDE_S, phase="RolledBack")
    assert "after the switch" in str(doc["reason"]) or any(
        "after the switch" in str(e["reason"]) for e in rollout_transitions(serve))
    assert all(str(e["actor"]).startswith("engine:") for e in rollout_transitions(serve))
    wait_for_sync(lambda: versions(port, 20) == Counter({"v1": 20}), timeout=CONVERGE_S,
                  message="all traffic back on v1")


def test_prometheus_provider_rolls_back_on_its_numbers(
    serve: ServeProcess, make_edge: Callable[..., Edge]
) -> None:
    port, _, _ = make_edge()

    def answer(query: str) -> float | None:  # what a Prometheus scraping the fleet says
        if 'envoy_cluster_name="payments|v2"' not in query or "histogram" in query:
            return None
        return 40.0 if 'response_code_class="5"' in query else 0.0 if "401" in query else 100.0

    with PromApi(answer) as prom:
        apply(serve, rollout_yaml(steps=STEPS, interval=INTERVAL, extra=(
            "  analysis: {provider: prometheus, prometheus: {url: \"" + prom.url + "\"}, "
            "minRequests: 10, successRate: 0.95, failureLimit: 2}\n")))
        doc = wait_status(serve, DECIDE_S, phase="RolledBack")
    check = doc["lastCheck"]
    assert isinstance(check, dict) and check["verdict"] == "failed"
    assert check["successRate"] == 0.6 and check["requests"] == 100
    assert any("[" in q and 'envoy_cluster_name="payments|v2"' in q for q in prom.queries)
    wait_for_sync(lambda: versions(port, 20) == Counter({"v1": 20}), timeout=CONVERGE_S,
                  message="all traffic back on v1")
