"""Reliability fixtures: the e2e ones (Envoys, echo upstreams), an etcd the test owns,
and `figures`, how each test reports what it measured (printed for `pytest -s`, and
attached to the JUnit report as properties).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import envoy_factory, etcd, serve, upstream_factory

__all__ = ["envoy_factory", "etcd", "figures", "serve", "upstream_factory"]

Figures = Callable[..., None]


@pytest.fixture
def figures(request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
            ) -> Figures:
    """`figures(sent=..., failed=..., recover_s=...)`: print and record a test's figures."""
    def report(**values: object) -> None:
        shown = ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        print(f"\n[figures] {request.node.name}: {shown}")
        for key, value in values.items():
            record_property(key, value)
    return report
