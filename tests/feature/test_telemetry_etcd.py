"""etcd errors reach the control plane's metrics: the client's `on_error` hook, for real."""

from __future__ import annotations

import pytest

from controlplane.errors import StoreUnavailableError
from controlplane.store.kv import EtcdKV
from controlplane.telemetry import Telemetry
from tests.support.ports import free_port


async def test_a_failed_etcd_call_is_counted() -> None:
    telemetry = Telemetry()
    kv = EtcdKV([f"127.0.0.1:{free_port()}"], timeout=2)  # nothing listens there
    kv.on_error = telemetry.etcd_error
    try:
        with pytest.raises(StoreUnavailableError):
            await kv.get(b"/anything")
    finally:
        await kv.close()
    assert (telemetry.registry.get_sample_value(
        "controlplane_etcd_errors_total", {"operation": "get"}) or 0) >= 1  # per attempt
