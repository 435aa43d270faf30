"""End-to-end fixtures: the real `controlplane serve`, real Envoys, echo upstreams.

Every process is stopped by PID in teardown; every port is picked free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.store import EmbeddedEtcd
from tests.support.controlplane import ServeProcess, envoy_bootstrap
from tests.support.envoy import Envoy, start_envoy
from tests.support.upstream import Upstream


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    """An etcd apart from `serve`: for replicas to share, or for a test to stop."""
    server = asyncio.run(EmbeddedEtcd.start(tmp_path / "etcd"))
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    # Tests write Credential files under tmp_path (the data dir below it stays refused).
    proc = ServeProcess(tmp_path / "cp", extra_args=("--credentials-dir", str(tmp_path))
                        ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def make(version: str, status: int = 200, *, host: str = "127.0.0.1",
             port: int | None = None) -> Upstream:
        up = Upstream(version, status=status, host=host, port=port).start_in_thread()
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop_thread()


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[Callable[..., Envoy]]:
    """Start a real Envoy bootstrapped by `controlplane bootstrap` (the product's own)."""
    started: list[Envoy] = []

    def make(cp: ServeProcess, node_id: str, group: str, *, delta: bool = False) -> Envoy:
        envoy = start_envoy(envoy_bootstrap(node_id, group, cp.xds, delta=delta),
                            tmp_path / "envoy" / node_id)
        started.append(envoy)
        return envoy

    yield make
    for envoy in started:
        envoy.stop()
