"""Fixtures feature tests share: a real etcd (the embedded one, TLS) and a Store on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.store import EmbeddedEtcd, Store


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EmbeddedEtcd]:
    """A fresh etcd under `tmp_path`, stopped by PID after the test."""
    server = await EmbeddedEtcd.start(tmp_path / "data")
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def store(etcd: EmbeddedEtcd) -> AsyncIterator[Store]:
    """A Store on `etcd` (empty: no resources applied)."""
    s = await Store.connect([etcd.endpoint], tls=etcd.tls)
    try:
        yield s
    finally:
        await s.close()
