"""A proxy asking over SDS for another group's secret gets nothing, and the denial is
logged with its node id, its group and the secret's name (SotW, Delta, FetchSecrets)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from controlplane.xds.resources import SECRET
from controlplane.xds.snapshot import Snapshot
from tests.support.ads import AdsClient, XdsHarness, node, xds_server
from tests.support.xds_resources import generic_secret, resources

DENIALS = "controlplane.xds.denials"


def secrets_of(group: str) -> Snapshot:
    return Snapshot.build(resources(secrets=[generic_secret(f"cert-{group}", group.encode())]))


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async with xds_server() as harness:
        harness.cache.set_snapshot("a", secrets_of("a"))
        harness.cache.set_snapshot("b", secrets_of("b"))
        yield harness


def denials(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == DENIALS and r.levelno == logging.WARNING]


def names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    return sorted(generic_name(r) for r in response.resources)


def generic_name(packed: object) -> str:
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    secret = secret_pb2.Secret()
    packed.Unpack(secret)  # type: ignore[attr-defined]
    return str(secret.name)


async def test_sotw_another_groups_secret_is_not_sent_and_logged(
    xds: XdsHarness, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=DENIALS)
    async with AdsClient(xds.target) as client:
        await client.request(SECRET, ["cert-a", "cert-b"], node=node("proxy-a1", "a"))
        response = await client.recv()
        assert names(response) == ["cert-a"]
        # Asked again (an ACK repeating the names): still nothing, logged only once.
        await client.ack(response, names=["cert-a", "cert-b"])
        xds.cache.set_snapshot("a", Snapshot.build(resources(
            secrets=[generic_secret("cert-a", b"rotated")])))
        assert names(await client.recv()) == ["cert-a"]
    logged = denials(caplog)
    assert len(logged) == 1, logged
    assert "'cert-b'" in logged[0] and "'proxy-a1'" in logged[0] and "group 'a'" in logged[0]


async def test_delta_another_groups_secret_is_reported_missing_and_logged(
    xds: XdsHarness, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=DENIALS)
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(SECRET, subscribe=["cert-b"], node=node("proxy-a2", "a"))
        response = await client.recv()
        assert list(response.resources) == []
        assert list(response.removed_resources) == ["cert-b"]
    logged = denials(caplog)
    assert len(logged) == 1 and "'cert-b'" in logged[0] and "'proxy-a2'" in logged[0], logged


async def test_fetch_secrets_of_another_group_returns_nothing_and_is_logged(
    xds: XdsHarness, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=DENIALS)
    async with grpc.aio.insecure_channel(xds.target) as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        response = await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(
            node=node("proxy-a3", "a"), type_url=SECRET, resource_names=["cert-a", "cert-b"]))
    assert names(response) == ["cert-a"]
    logged = denials(caplog)
    assert len(logged) == 1 and "'cert-b'" in logged[0] and "'proxy-a3'" in logged[0], logged
