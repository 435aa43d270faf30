"""A canary where each version has its own account: each version's cluster injects its
own credential; after success the old one stays served for the rollback window, so a
rollback works with the old account at once; when the window ends it is retired."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest

from tests.e2e.test_backbone import CONVERGE_S, FIRST_CONFIG_S, apply, version_behind
from tests.e2e.test_rollout import status, verb, wait_status
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.http import get_sync
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e


def accounts_yaml(port: int, v1: int, v2: int) -> str:
    return f"""
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-http}}
spec: {{group: edge, port: {port}, address: 127.0.0.1}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: payments}}
spec: {{listener: edge-http, prefix: /, upstream: payments}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: payments}}
spec:
  active: v1
  versions:
    v1: {{endpoints: ["127.0.0.1:{v1}"], credential: payments-v1-key}}
    v2: {{endpoints: ["127.0.0.1:{v2}"], credential: payments-v2-key}}
  timeout: 5s
---
apiVersion: controlplane/v1
kind: Credential
metadata: {{name: payments-v1-key}}
spec: {{header: x-api-key, value: account-of-v1}}
---
apiVersion: controlplane/v1
kind: Credential
metadata: {{name: payments-v2-key}}
spec: {{header: x-api-key, value: account-of-v2}}
"""


def rollout_yaml(window: str) -> str:
    return f"""
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: payments-v2}}
spec: {{upstream: payments, from: v1, to: v2, steps: [50, 100], stepInterval: 1s,
       rollbackWindow: {window}}}
"""


def accounts(port: int, n: int) -> Counter[tuple[str, str]]:
    """(version, x-api-key it received) over `n` requests."""
    seen: Counter[tuple[str, str]] = Counter()
    for _ in range(n):
        body = get_sync(port, "/anything", timeout=2.0).json()
        seen[(body["version"], body["headers"].get("x-api-key", ""))] += 1
    return seen


@pytest.fixture
def edge(serve: ServeProcess, upstream_factory: Callable[..., Upstream],
         envoy_factory: Callable[..., Envoy]) -> tuple[int, Envoy]:
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(serve, accounts_yaml(port, v1.port, v2.port))
    envoy = envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")
    return port, envoy


def test_each_version_sends_its_own_account_and_rollback_keeps_the_old(
    serve: ServeProcess, edge: tuple[int, Envoy]
) -> None:
    port, _ = edge
    apply(serve, rollout_yaml("1h").replace("stepInterval: 1s", "stepInterval: 1h"))
    wait_status(serve, CONVERGE_S * 3, phase="Progressing", step=0, applied=True)
    assert set(accounts(port, 40)) == {("v1", "account-of-v1"), ("v2", "account-of-v2")}
    verb(serve, "promote", "payments-v2")
    wait_status(serve, CONVERGE_S * 3, phase="Succeeded")
    version_behind(port, CONVERGE_S)("v2")
    assert set(accounts(port, 20)) == {("v2", "account-of-v2")}
    assert status(serve)["fromRetained"] is True

    verb(serve, "rollback", "payments-v2")  # within the window: v1's account still served
    wait_status(serve, CONVERGE_S * 3, phase="RolledBack")
    version_behind(port, CONVERGE_S)("v1")
    assert set(accounts(port, 20)) == {("v1", "account-of-v1")}


def test_the_old_account_is_retired_when_the_rollback_window_ends(
    serve: ServeProcess, edge: tuple[int, Envoy]
) -> None:
    port, envoy = edge
    apply(serve, rollout_yaml("3s"))
    wait_status(serve, 30, phase="Succeeded")
    assert "credential-payments-v1-key" in json.dumps(envoy.config_dump())
    wait_for_sync(lambda: status(serve)["fromRetained"] is False, timeout=15,
                  message="the rollback window ends")
    wait_for_sync(lambda: "credential-payments-v1-key" not in json.dumps(envoy.config_dump()),
                  timeout=CONVERGE_S * 2, message="v1's account leaves the proxy")
    assert "payments|v1" not in envoy.dynamic_names("clusters")
    assert set(accounts(port, 20)) == {("v2", "account-of-v2")}
    entries = json.loads(cli(["audit", "-o", "json"], server=serve.admin).out)
    assert any("v1 retired" in str(e["reason"]) for e in entries)
    assert "unchanged" in verb(serve, "rollback", "payments-v2")  # too late now
