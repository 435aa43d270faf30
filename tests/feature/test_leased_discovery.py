"""The leader's copy of leased keys on a real etcd: keys in etcd's naming format under a
version's prefix and registrations reach the stored state when added, deleted or expired
with their lease (watched, unaudited, fenced); a bad value is skipped with one warning
and the watch goes on; an empty prefix is no endpoint; a source dropped leaves nothing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from controlplane.discovery import LeasedEndpoints
from controlplane.discovery.naming import registration_value
from controlplane.model import parse_yaml
from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.leader import together
from tests.support.leading import leading
from tests.support.wait import wait_for

UPSTREAM = """
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: payments}}
spec:
  active: v1
  versions:
    v1: {{endpoints: ["10.0.0.9:8080"]{source}}}
    v2: {{endpointsFrom: {{etcd: services/empty}}}}
"""
LEASED = UPSTREAM.format(
    source=", endpointsFrom: {etcd: services/payments/v1, registered: true}")
STATIC = UPSTREAM.format(source="")
PREFIX = "services/payments/v1/"
FOLLOW_S = 5.0  # a watch event, a fenced write, the state watch: well under 1 s unloaded


def naming(address: str) -> bytes:
    return f'{{"Op":0,"Addr":"{address}","Metadata":{{"zone":"a"}}}}'.encode()


@dataclass
class Running:
    store: Store

    async def addresses(self, version: str = "v1") -> set[tuple[str, str]]:
        state, _ = await self.store.load()
        return {(a.address, a.source) for a in state.addresses("payments", version)}

    async def has(self, *wanted: tuple[str, str], version: str = "v1") -> bool:
        return await self.addresses(version) == {("10.0.0.9:8080", "static"), *wanted}


@pytest.fixture
async def running(etcd: EmbeddedEtcd) -> AsyncIterator[Running]:
    store = await Store.connect([etcd.endpoint], tls=etcd.tls)
    await store.apply(parse_yaml(LEASED), actor="test")
    state, _ = await store.load()
    leased = LeasedEndpoints(store, state)
    try:
        async with leading(store, together(leased.lead), leased.update):
            yield Running(store)
    finally:
        await store.close()


async def test_keys_added_deleted_and_expired_reach_the_state(
        running: Running, caplog: pytest.LogCaptureFixture) -> None:
    store, kv = running.store, running.store.kv
    audit_before = len(await store.audit())
    lease = await kv.grant(30)
    await kv.put(f"{PREFIX}a".encode(), naming("10.0.0.1:8080"), lease=lease)
    a = ("10.0.0.1:8080", f"etcd:{PREFIX}a")
    await wait_for(lambda: running.has(a), FOLLOW_S, message="a key added")
    await kv.put(f"{PREFIX}b".encode(), naming("10.0.0.2:8080"))
    b = ("10.0.0.2:8080", f"etcd:{PREFIX}b")
    await wait_for(lambda: running.has(a, b), FOLLOW_S, message="a second key")
    await kv.delete(f"{PREFIX}b".encode())
    await wait_for(lambda: running.has(a), FOLLOW_S, message="a key deleted")
    await kv.revoke(lease)
    await wait_for(lambda: running.has(), FOLLOW_S, message="a key's lease revoked")

    short = await kv.grant(2)  # never kept alive: etcd deletes the key when it expires
    await kv.put(f"{PREFIX}c".encode(), naming("10.0.0.3:8080"), lease=short)
    c = ("10.0.0.3:8080", f"etcd:{PREFIX}c")
    await wait_for(lambda: running.has(c), FOLLOW_S, message="a key under a short lease")
    await wait_for(lambda: running.has(), 2 + FOLLOW_S, message="its lease expired")

    with caplog.at_level(logging.WARNING, logger="controlplane.discovery.leased"):
        await kv.put(f"{PREFIX}bad".encode(), b"10.0.0.4:8080")  # not the naming format
        await kv.put(f"{PREFIX}d".encode(), naming("10.0.0.4:8080"))
        d = ("10.0.0.4:8080", f"etcd:{PREFIX}d")
        await wait_for(lambda: running.has(d), FOLLOW_S, message="the watch goes on")
        await kv.put(f"{PREFIX}bad".encode(), b"10.0.0.4:8080")  # the same again: no word
        await kv.put(f"{PREFIX}e".encode(), naming("10.0.0.5:8080"))
        e = ("10.0.0.5:8080", f"etcd:{PREFIX}e")
        await wait_for(lambda: running.has(d, e), FOLLOW_S, message="after the bad key")
    warnings = [r.getMessage() for r in caplog.records if f"{PREFIX}bad" in r.getMessage()]
    assert len(warnings) == 1 and "naming format" in warnings[0], warnings

    await kv.put(store.keys.registration("payments", "v1", "10.0.0.6:80"),
                 registration_value("10.0.0.6:80", "ops"))
    await wait_for(lambda: running.has(d, e, ("10.0.0.6:80", "registered:ops")), FOLLOW_S,
                   message="a registration")
    assert await running.addresses("v2") == set()  # an empty prefix: no endpoint, no error
    assert len(await store.audit()) == audit_before  # not user mutations: no audit entry


async def test_a_version_that_drops_its_source_leaves_nothing_behind(
        running: Running) -> None:
    store = running.store
    await store.kv.put(f"{PREFIX}a".encode(), naming("10.0.0.1:8080"))
    await wait_for(lambda: running.has(("10.0.0.1:8080", f"etcd:{PREFIX}a")), FOLLOW_S,
                   message="a key added")
    await store.apply(parse_yaml(STATIC), actor="test")

    async def gone() -> bool:
        return await store.kv.get(store.keys.leased("payments", "v1")) is None
    await wait_for(gone, FOLLOW_S, message="the version's leased set deleted")
    assert await running.has()
    await store.apply(parse_yaml(LEASED), actor="test")  # taken again: listed again
    await wait_for(lambda: running.has(("10.0.0.1:8080", f"etcd:{PREFIX}a")), FOLLOW_S,
                   message="the prefix watched again")


async def test_a_new_leader_does_not_empty_a_set_before_it_has_listed(
        etcd: EmbeddedEtcd) -> None:
    store = await Store.connect([etcd.endpoint], tls=etcd.tls)
    try:
        await store.apply(parse_yaml(LEASED), actor="test")
        await store.kv.put(f"{PREFIX}a".encode(), naming("10.0.0.1:8080"))
        running, key = Running(store), store.keys.leased("payments", "v1")
        a, b = (("10.0.0.1:8080", f"etcd:{PREFIX}a"), ("10.0.0.2:8080", f"etcd:{PREFIX}b"))
        for leader in ("first", "second"):
            state, _ = await store.load()
            leased = LeasedEndpoints(store, state)
            async with leading(store, together(leased.lead), leased.update):
                if leader == "first":
                    await wait_for(lambda: running.has(a), FOLLOW_S, message="written")
                    first = await store.kv.get(key)
                    continue
                await store.kv.put(f"{PREFIX}b".encode(), naming("10.0.0.2:8080"))
                await wait_for(lambda: running.has(a, b), FOLLOW_S, message="the new leader")
        now = await store.kv.get(key)
        assert first is not None and now is not None
        assert now.create_revision == first.create_revision  # never deleted in between
    finally:
        await store.close()
