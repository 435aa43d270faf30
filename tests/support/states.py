"""Desired states tests share: the `payments` upstream behind the `edge` group."""

from __future__ import annotations

PAYMENTS_EDGE = """
apiVersion: controlplane/v1
kind: Listener
metadata: {name: edge-http}
spec: {group: edge, port: 10000}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: payments}
spec: {listener: edge-http, upstream: payments}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec:
  active: v1
  versions: {v1: {endpoints: ["127.0.0.1:9001"]}, v2: {endpoints: ["127.0.0.1:9002"]}}
"""
"""A listener, a route and an upstream with versions v1 (active) and v2."""


def with_rollout(steps: str = "[10, 50, 100]", interval: str = "10s") -> str:
    """PAYMENTS_EDGE plus Rollout `payments-v2` (v1 → v2)."""
    return PAYMENTS_EDGE + f"""---
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: payments-v2}}
spec: {{upstream: payments, from: v1, to: v2, steps: {steps}, stepInterval: {interval}}}
"""
