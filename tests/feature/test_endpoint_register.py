"""`RegisterEndpoint` on the real admin service (grpc.aio on port 0, a real grpc.aio
client, a real etcd): the key is held by a lease of the TTL and refreshed by keepalives,
audited once; it goes at once when the stream ends or the client drops it; viewers and
versions that did not opt in are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from controlplane.admin import AdminService
from controlplane.admin.auth import TokenAuthenticator
from controlplane.api import admin_pb2, admin_pb2_grpc
from controlplane.contract import FIELD_ERRORS_KEY
from controlplane.model import parse_yaml
from controlplane.store import EmbeddedEtcd, Store
from tests.support.wait import wait_for

UPSTREAM = """
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec:
  active: v1
  versions:
    v1: {endpoints: ["10.0.0.9:8080"]}
    v2: {endpointsFrom: {registered: true}}
"""
Request = admin_pb2.RegisterEndpointRequest


@dataclass
class Admin:
    store: Store
    stub: admin_pb2_grpc.AdminStub
    tokens: dict[str, str]

    def md(self, role: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[role]}"),)


@pytest.fixture
async def admin(etcd: EmbeddedEtcd) -> AsyncIterator[Admin]:
    store = await Store.connect([etcd.endpoint], tls=etcd.tls)
    await store.apply(parse_yaml(UPSTREAM), actor="test")
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminService(store, proxies=list, authenticator=TokenAuthenticator(store)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = admin_pb2_grpc.AdminStub(channel)
    tokens: dict[str, str] = {}
    for role in ("admin", "operator", "viewer"):  # the first on loopback, then as admin
        made = await stub.CreateToken(admin_pb2.CreateTokenRequest(role=role, name=role),
                                      metadata=(("authorization", f"Bearer {tokens['admin']}"),)
                                      if tokens else ())
        tokens[role] = made.token
    try:
        yield Admin(store, stub, tokens)
    finally:
        await channel.close()
        await server.stop(0)
        await store.close()


class Registrar:
    """One RegisterEndpoint stream whose requests the test sends one by one."""

    def __init__(self, admin: Admin, role: str, first: admin_pb2.RegisterEndpointRequest) -> None:
        self._queue: asyncio.Queue[admin_pb2.RegisterEndpointRequest | None] = asyncio.Queue()
        self._queue.put_nowait(first)
        self.call = admin.stub.RegisterEndpoint(self._requests(), metadata=admin.md(role))

    async def _requests(self) -> AsyncIterator[admin_pb2.RegisterEndpointRequest]:
        while (request := await self._queue.get()) is not None:
            yield request

    def keepalive(self) -> None:
        self._queue.put_nowait(Request())

    def end(self) -> None:
        self._queue.put_nowait(None)


def first(version: str = "v2", ttl: float = 3) -> admin_pb2.RegisterEndpointRequest:
    return Request(upstream="payments", version=version, address="10.0.0.7:8080",
                   ttl_seconds=ttl)


async def test_registered_while_the_stream_lives_audited_once(admin: Admin) -> None:
    store = admin.store
    key = store.keys.registration("payments", "v2", "10.0.0.7:8080")
    registrar = Registrar(admin, "operator", first(ttl=3))
    reply = await registrar.call.read()
    assert (reply.address, reply.principal, reply.ttl_seconds) == ("10.0.0.7:8080",
                                                                   "token:operator", 3)
    held = await store.kv.get(key)
    assert held is not None and held.lease
    assert json.loads(held.value) == {"address": "10.0.0.7:8080", "principal": reply.principal}
    for _ in range(4):  # 4 keepalives a second apart outlive the 3 s TTL
        registrar.keepalive()
        await asyncio.sleep(1.0)
        assert await store.kv.get(key) is not None
    entries = [e for e in await store.audit() if e.action == "endpoint/register"]
    assert [(e.actor, e.name) for e in entries] == [(reply.principal, "payments")]

    registrar.end()  # what the CLI does on SIGTERM: half-close
    assert await registrar.call.read() == grpc.aio.EOF
    assert await registrar.call.code() == grpc.StatusCode.OK
    assert await store.kv.get(key) is None  # revoked before the stream ended


async def test_a_client_that_drops_its_stream_is_deregistered(admin: Admin) -> None:
    key = admin.store.keys.registration("payments", "v2", "10.0.0.7:8080")
    registrar = Registrar(admin, "operator", first(ttl=30))
    await registrar.call.read()
    assert await admin.store.kv.get(key) is not None
    registrar.call.cancel()  # the connection gone, no half-close

    async def gone() -> bool:
        return await admin.store.kv.get(key) is None
    await wait_for(gone, 2.0, message="revoked at once, not after the 30 s TTL")


@pytest.mark.parametrize(("role", "version", "code", "says"), [
    pytest.param("viewer", "v2", grpc.StatusCode.PERMISSION_DENIED, "operator", id="viewer"),
    pytest.param("operator", "v1", grpc.StatusCode.INVALID_ARGUMENT,
                 "spec.versions.v1.endpointsFrom", id="not-opted-in"),
])
async def test_refused(admin: Admin, role: str, version: str, code: grpc.StatusCode,
                       says: str) -> None:
    registrar = Registrar(admin, role, first(version))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await registrar.call.read()
    registrar.end()
    assert info.value.code() == code
    trailers = dict(info.value.trailing_metadata() or ())
    assert says in (info.value.details() or "") + str(trailers.get(FIELD_ERRORS_KEY, ""))
    got = await admin.store.kv.range(admin.store.keys.registered)
    assert got.kvs == ()
