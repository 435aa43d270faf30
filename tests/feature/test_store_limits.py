"""Writes over etcd's request size limit, on a real etcd: refused as bad input that
names the resource, never reported as "store unavailable", never retried."""

from __future__ import annotations

import pytest

from controlplane.errors import RequestTooLargeError
from controlplane.model import parse_yaml
from controlplane.secrets import SealingKey
from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.embedded import MAX_REQUEST_BYTES


def credential(name: str, size: int) -> str:
    return (f"apiVersion: controlplane/v1\nkind: Credential\nmetadata: {{name: {name}}}\n"
            f'spec: {{header: x-api-key, value: "{"k" * size}"}}\n')


@pytest.mark.parametrize("size", [
    # etcd's own answers, without our check: over --max-request-bytes ("etcdserver:
    # request is too large"), and over its gRPC receive limit (that + 512 KiB).
    pytest.param(1_700_000, id="over-the-request-limit"),
    pytest.param(2_500_000, id="over-the-grpc-limit"),
])
async def test_etcds_refusal_is_a_too_large_error_naming_the_resource(
    etcd: EmbeddedEtcd, size: int,
) -> None:
    store = await Store.connect([etcd.endpoint], tls=etcd.tls,  # limit unknown: etcd is asked
                                sealer=SealingKey(SealingKey.generate()))
    try:
        with pytest.raises(RequestTooLargeError) as caught:
            await store.apply(parse_yaml(credential("big", size)), actor="test")
        (error,) = caught.value.errors
        assert error.location == "Credential/big"
        assert error.reason.startswith(f"too large: {caught.value.size} bytes")
        assert caught.value.size > size
        assert await store.list("Credential") == []
    finally:
        await store.close()


async def test_a_known_limit_is_checked_before_etcd_is_asked(etcd: EmbeddedEtcd) -> None:
    store = await Store.connect([etcd.endpoint], tls=etcd.tls, max_request_bytes=MAX_REQUEST_BYTES,
                                sealer=SealingKey(SealingKey.generate()))
    try:
        revision = (await store.kv.range(b"/")).revision
        with pytest.raises(RequestTooLargeError, match=r"too large: \d+ bytes, limit 1572864"):
            await store.apply(parse_yaml(credential("big", 1_600_000)), actor="test")
        assert (await store.kv.range(b"/")).revision == revision
        await store.apply(parse_yaml(credential("fits", 1_000_000)), actor="test")
    finally:
        await store.close()
