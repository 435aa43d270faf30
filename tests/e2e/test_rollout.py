"""Rollouts end to end: real `controlplane serve`, real Envoy, real traffic."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.test_backbone import CONVERGE_S, FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.http import get_sync
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

LEADER_TTL_S = 10


def rollout_yaml(name: str = "payments-v2", *, steps: str = "[10, 50, 100]",
                 interval: str = "1s", extra: str = "") -> str:
    return f"""
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: {name}}}
spec:
  upstream: payments
  from: v1
  to: v2
  steps: {steps}
  stepInterval: {interval}
{extra}"""


def status(cp: ServeProcess, name: str = "payments-v2") -> dict[str, object]:
    result = cli(["rollout", "status", name, "-o", "json"], server=cp.admin)
    assert result.code == 0, result.err
    doc: dict[str, object] = json.loads(result.out)
    return doc


def wait_status(cp: ServeProcess, timeout: float, **want: object) -> dict[str, object]:
    def matches() -> dict[str, object] | None:
        doc = status(cp)
        return doc if all(doc[k] == v for k, v in want.items()) else None
    return wait_for_sync(matches, timeout=timeout, interval=0.1, message=f"rollout {want}")


def verb(cp: ServeProcess, *args: str) -> str:
    result = cli(["rollout", *args], server=cp.admin)
    assert result.code == 0, result.err
    return result.out


class Load:
    """Steady requests through Envoy in a thread; counts versions and failures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = get_sync(self.port, "/anything", timeout=2.0)
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            if response.status != 200:
                self.failures.append(f"HTTP {response.status}")
            else:
                self.versions[response.json()["version"]] += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def share(port: int, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        response = get_sync(port, "/anything", timeout=2.0, headers=headers)
        assert response.status == 200
        seen[response.json()["version"]] += 1
    return seen


@pytest.fixture
def edge(serve: ServeProcess, upstream_factory: Callable[..., Upstream],
         envoy_factory: Callable[..., Envoy]) -> Iterator[tuple[int, Upstream, Upstream, Envoy]]:
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port,
                           extra="  retries: {attempts: 2, on: \"5xx,reset,connect-failure\"}\n"))
    envoy = envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")
    yield port, v1, v2, envoy


def test_canary_runs_to_success_without_a_failed_request(
    serve: ServeProcess, edge: tuple[int, Upstream, Upstream, Envoy]
) -> None:
    port = edge[0]
    with Load(port) as load:
        # A long first interval holds the 10% step while it is measured.
        apply(serve, rollout_yaml(interval="1h"))
        doc = wait_status(serve, CONVERGE_S * 3, phase="Progressing", step=0, applied=True)
        assert doc["proxies"] == {"acked": 1, "total": 1}
        seen = share(port, 1000)
        assert abs(seen["v2"] / 10 - 10) <= 5, seen  # percent of 1,000 requests
        verb(serve, "pause", "payments-v2")
        wait_status(serve, CONVERGE_S, phase="Paused", weight=10.0)
        table = cli(["get", "rollouts"], server=serve.admin).out
        assert "PHASE" in table and "Paused" in table and "10%" in table and "1/1" in table
        apply(serve, rollout_yaml(interval="1s"))  # editing a running rollout's pace
        verb(serve, "resume", "payments-v2")
        wait_status(serve, 30, phase="Succeeded", weight=100.0)
        version_behind(port, CONVERGE_S)("v2")
        assert share(port, 50) == Counter({"v2": 50})
    assert load.failures == [] and load.versions["v1"] and load.versions["v2"]

    upstream = json.loads(cli(["get", "upstream", "payments", "-o", "json"],
                              server=serve.admin).out)
    assert upstream["spec"]["active"] == "v2"  # the outcome sticks without the rollout
    entries = json.loads(cli(["audit", "-o", "json"], server=serve.admin).out)
    transitions = [(e["action"], e["after"]["step"]) for e in entries
                   if e["kind"] == "Rollout" and e["action"].startswith("rollout/")]
    assert ("rollout/Succeeded", 2) in transitions
    assert [t for t in transitions if t[0] == "rollout/Succeeded"] == [("rollout/Succeeded", 2)]
    assert any(e["action"] == "rollout/Paused" and e["actor"].startswith("local:")
               for e in entries)  # the operator's pause, with its principal


def test_header_match_reaches_the_new_version_at_weight_zero(
    serve: ServeProcess, edge: tuple[int, Upstream, Upstream, Envoy]
) -> None:
    port = edge[0]
    apply(serve, rollout_yaml(steps="[0, 100]", interval="1h",
                              extra='  match: {headers: {x-canary: "true"}}\n'))
    wait_status(serve, CONVERGE_S * 3, phase="Progressing", step=0, applied=True)
    assert share(port, 30, headers={"x-canary": "true"}) == Counter({"v2": 30})
    assert share(port, 30) == Counter({"v1": 30})


def test_abort_returns_all_traffic_at_once(
    serve: ServeProcess, edge: tuple[int, Upstream, Upstream, Envoy]
) -> None:
    port = edge[0]
    apply(serve, rollout_yaml(steps="[50, 100]", interval="1h"))
    wait_status(serve, CONVERGE_S * 3, phase="Progressing", step=0, applied=True)
    assert set(share(port, 60)) == {"v1", "v2"}
    verb(serve, "abort", "payments-v2")
    wait_status(serve, CONVERGE_S, phase="Aborted", weight=0.0)
    wait_for_sync(lambda: share(port, 20) == Counter({"v1": 20}), timeout=CONVERGE_S,
                  message="all traffic back on v1")
    assert "unchanged" in verb(serve, "abort", "payments-v2")  # idempotent
    upstream = json.loads(cli(["get", "upstream", "payments", "-o", "json"],
                              server=serve.admin).out)
    assert upstream["spec"]["active"] == "v1"


def test_mirror_then_canary_copies_traffic_before_shifting(
    serve: ServeProcess, edge: tuple[int, Upstream, Upstream, Envoy]
) -> None:
    port, _, v2, _ = edge
    apply(serve, rollout_yaml(steps="[50, 100]", interval="1h",
                              extra="  strategy: mirror-then-canary\n  mirror: {percent: 100}\n"))
    wait_status(serve, CONVERGE_S * 3, phase="Progressing", step=0, applied=True, weight=0.0)
    before = v2.requests
    assert share(port, 40) == Counter({"v1": 40})  # clients only ever see v1
    wait_for_sync(lambda: v2.requests - before >= 40, timeout=CONVERGE_S,
                  message="v2 received the mirrored copies")


def test_control_plane_killed_mid_step_resumes_at_the_same_step(
    serve: ServeProcess, edge: tuple[int, Upstream, Upstream, Envoy]
) -> None:
    port, _, _, envoy = edge
    apply(serve, rollout_yaml(steps="[20, 60, 100]", interval="1h"))
    before = wait_status(serve, CONVERGE_S * 3, phase="Progressing", step=0, applied=True)
    routes_before = envoy.config_dump("dynamic_route_configs")
    with Load(port) as load:
        serve.kill()
        serve.start()
        after = wait_status(serve, FIRST_CONFIG_S, phase="Progressing", step=0)
        assert after["weight"] == before["weight"] == 20.0
        wait_for_sync(lambda: status(serve)["proxies"] == {"acked": 1, "total": 1},
                      timeout=FIRST_CONFIG_S, message="the proxy is back and ACKed")
        assert envoy.config_dump("dynamic_route_configs") == routes_before
        verb(serve, "promote", "payments-v2")
        # The killed replica's leader lease (10 s TTL) must lapse before the new one leads.
        wait_status(serve, LEADER_TTL_S + FIRST_CONFIG_S, phase="Progressing", step=1,
                    weight=60.0, applied=True)
    assert load.failures == []
