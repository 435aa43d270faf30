"""Blue-green and rolling updates end to end: a step waits until Envoy's own health
checks pass on the new endpoints (reported through the metrics sink), with real traffic
through a real Envoy and not one failed request."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from tests.e2e.test_backbone import CONVERGE_S, FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.e2e.test_rollout import Load, share, status, verb, wait_status
from tests.support.controlplane import ServeProcess
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

HEALTH_CHECK = ("  healthCheck: {path: /healthz, interval: 200ms, timeout: 1s, "
                "unhealthyThreshold: 1, healthyThreshold: 1}\n")
GATE_S = 30.0
"""Health checks every 200 ms, stats flushed every second, reports every half second."""


def _waiting_on(cp: ServeProcess, cluster: str, healthy: str) -> dict[str, object] | None:
    doc = status(cp)
    message = str(doc["message"])
    return doc if cluster in message and healthy in message else None


def test_bluegreen_switches_only_once_the_new_version_is_healthy(
    serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy],
) -> None:
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    v2.healthy = False
    port = free_port()
    apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port, extra=HEALTH_CHECK))
    envoy = envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")
    with Load(port) as load:
        apply(serve, """
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: payments-v2}
spec: {upstream: payments, from: v1, to: v2, strategy: bluegreen, stepInterval: 1s,
       rollbackWindow: 1h}
""")
        # The control plane has seen Envoy report v2 unhealthy, and holds the preview.
        doc = wait_for_sync(lambda: _waiting_on(serve, "payments|v2", "0/1 endpoint(s)"),
                            timeout=GATE_S, interval=0.2, message="waiting on v2's health")
        assert doc["phase"] == "Progressing" and doc["applied"] is False and doc["weight"] == 0
        assert share(port, 20) == Counter({"v1": 20})

        v2.healthy = True
        wait_status(serve, GATE_S, phase="Succeeded", weight=100.0)
        version_behind(port, CONVERGE_S)("v2")
        doc = status(serve)
        assert doc["fromRetained"] is True and doc["message"] == ""
        # `from` stays configured for the rollback window: switching back is one route change.
        assert "payments|v1" in envoy.dynamic_names("clusters")
        verb(serve, "rollback", "payments-v2")
        wait_status(serve, CONVERGE_S, phase="RolledBack", weight=0.0)
        version_behind(port, CONVERGE_S)("v1")
    assert load.failures == [], load.failures[:5]
    assert load.versions["v1"] and load.versions["v2"]


def test_rolling_update_replaces_endpoints_batch_by_healthy_batch(
    serve: ServeProcess, envoy_factory: Callable[..., Envoy],
) -> None:
    olds = [Upstream("v1").start_in_thread() for _ in range(2)]
    news = [Upstream("v2").start_in_thread() for _ in range(2)]
    try:
        news[0].healthy = False  # the first batch's new endpoint
        port = free_port()
        text = edge_yaml(port=port, v1=olds[0].port, v2=news[0].port, extra=HEALTH_CHECK)
        text = text.replace(f'["127.0.0.1:{olds[0].port}"]',
                            f'["127.0.0.1:{olds[0].port}", "127.0.0.1:{olds[1].port}"]')
        text = text.replace(f'["127.0.0.1:{news[0].port}"]',
                            f'["127.0.0.1:{news[0].port}", "127.0.0.1:{news[1].port}"]')
        apply(serve, text)
        envoy = envoy_factory(serve, "edge-1", "edge")
        version_behind(port, FIRST_CONFIG_S)("v1")
        with Load(port) as load:
            apply(serve, """
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: payments-v2}
spec: {upstream: payments, from: v1, to: v2, strategy: rolling, steps: [50, 100],
       stepInterval: 1s}
""")
            doc = wait_for_sync(lambda: _waiting_on(serve, "payments|v1", "1/2 endpoint(s)"),
                                timeout=GATE_S, interval=0.2, message="waiting on batch 1")
            assert doc["step"] == 0 and doc["applied"] is False
            # The batch swapped one endpoint of the one cluster in use; Envoy sends
            # nothing to the new one while it fails its checks.
            assert envoy.stats("membership_total")["cluster.payments|v1.membership_total"] == 2
            assert share(port, 20) == Counter({"v1": 20})

            news[0].healthy = True
            wait_status(serve, GATE_S, phase="Succeeded", weight=100.0)
            version_behind(port, CONVERGE_S)("v2")
            assert share(port, 20) == Counter({"v2": 20})
        assert load.failures == [], load.failures[:5]
        assert all(up.paths["/anything"] for up in news)  # both new endpoints served
    finally:
        for up in olds + news:
            up.stop_thread()
