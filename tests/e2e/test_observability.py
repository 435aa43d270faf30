"""The control plane's own observability end to end: `serve --log-format json` with a real
Envoy connected; /metrics on --metrics-addr, scraped as Prometheus would."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_backbone import FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.e2e.test_rollout import rollout_yaml, verb, wait_status
from tests.support.controlplane import ServeProcess
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def serve_json(tmp_path: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path / "cp", extra_args=("--log-format", "json")).start()
    try:
        yield proc
    finally:
        proc.stop()


def scrape(cp: ServeProcess) -> Samples:
    url = f"http://127.0.0.1:{cp.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_and_json_logs(serve_json: ServeProcess,
                               upstream_factory: Callable[..., Upstream],
                               envoy_factory: Callable[..., Envoy]) -> None:
    cp = serve_json
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(cp, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    envoy_factory(cp, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")

    def connected() -> Samples | None:
        s = scrape(cp)
        ready = (metric(s, "controlplane_xds_connected_proxies", group="edge") == 1
                 and metric(s, "controlplane_xds_acks_total", type_url=ROUTE) > 0)
        return s if ready else None

    s = wait_for_sync(connected, timeout=10, interval=0.2, message="edge proxy in /metrics")
    assert metric(s, "controlplane_xds_pushes_total", type_url=CLUSTER) > 0
    assert metric(s, "controlplane_xds_acks_total", type_url=CLUSTER) > 0
    assert metric(s, "controlplane_xds_nacks_total", type_url=CLUSTER) == 0
    assert metric(s, "process_resident_memory_bytes") > 0

    # A rollout: its phase and weight appear; the pushes it causes are timed.
    apply(cp, rollout_yaml(steps="[10, 50, 100]", interval="30s"))

    def rolling() -> Samples | None:
        s = scrape(cp)
        ready = (metric(s, "controlplane_rollout_phase", rollout="payments-v2",
                        phase="Progressing") == 1
                 and metric(s, "controlplane_rollout_weight_percent",
                            rollout="payments-v2") == 10)
        return s if ready else None

    s = wait_for_sync(rolling, timeout=20, interval=0.2, message="rollout in /metrics")
    assert metric(s, "controlplane_rollout_phase", rollout="payments-v2", phase="Pending") == 0
    wait_for_sync(lambda: metric(scrape(cp), "controlplane_xds_push_latency_seconds_count",
                                 type_url=ROUTE) > 0,
                  timeout=10, interval=0.2, message="the weight's push is timed")
    verb(cp, "pause", "payments-v2")  # an operator's transition is logged like the engine's
    wait_status(cp, 10, phase="Paused")
    wait_for_sync(lambda: metric(scrape(cp), "controlplane_rollout_phase",
                                 rollout="payments-v2", phase="Paused") == 1,
                  timeout=10, interval=0.2, message="Paused in /metrics")

    # Every line serve wrote is JSON, and the rollout's transition is one of them.
    assert cp.log_path is not None
    lines = [json.loads(line) for line in cp.log_path.read_text().splitlines() if line]
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    transitions = [line for line in lines if line.get("rollout") == "payments-v2"]
    assert any(t["from"] == "Pending" and t["to"] == "Progressing" and t["reason"]
               and t["actor"].startswith("engine:") for t in transitions), transitions
    assert any(t["to"] == "Paused" and not t["actor"].startswith("engine:")
               for t in transitions), transitions
    assert any("serving xDS on" in line["msg"] and line["metrics_port"] == cp.metrics_port
               for line in lines)
