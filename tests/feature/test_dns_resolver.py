"""The leader's name resolver on a real etcd and a real DNS server: answers reach the
stored state (once per change, unaudited, fenced), a failing name keeps its last good
addresses with a visible status, a name no longer used leaves nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.discovery import DnsLookup, NameResolver
from controlplane.discovery.report import endpoints_report
from controlplane.model import DesiredState, parse_yaml
from controlplane.store import EmbeddedEtcd, LeaderElection, Store
from controlplane.store.leader import together
from tests.support.dns_server import DnsServer
from tests.support.leading import leading
from tests.support.wait import wait_for

UPSTREAM = """
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: payments}}
spec:
  active: v1
  versions:
    v1: {{endpoints: [{v1}]}}
    v2: {{endpoints: ["ghost.test:8080"]}}
"""
NAMED = UPSTREAM.format(v1='"payments.test:8080", "10.0.0.9:8080"')
UNNAMED = UPSTREAM.format(v1='"10.0.0.9:8080"')


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@dataclass
class Running:
    store: Store
    resolver: NameResolver
    failing: list[int]
    election: LeaderElection

    async def addresses(self, version: str = "v1") -> list[tuple[str, str]]:
        state, _ = await self.store.load()
        return [(a.address, a.source) for a in state.addresses("payments", version)]

    async def resolved(self, address: str) -> bool:
        return (address, "dns:payments.test") in await self.addresses()


@pytest.fixture
async def running(tmp_path: Path, dns: DnsServer) -> AsyncIterator[Running]:
    etcd = await EmbeddedEtcd.start(tmp_path / "data")
    store = await Store.connect([etcd.endpoint], tls=etcd.tls)
    await store.apply(parse_yaml(NAMED), actor="test")
    state, _ = await store.load()
    failing: list[int] = []
    resolver = NameResolver(store, DnsLookup([("127.0.0.1", dns.port)]), state,
                            on_failing=failing.append)

    try:
        async with leading(store, together(resolver.lead), resolver.update) as election:
            yield Running(store, resolver, failing, election)
    finally:
        await store.close()
        await etcd.stop()


async def test_answers_follow_dns_and_a_failing_name_keeps_its_last_good(
        running: Running, dns: DnsServer) -> None:
    store = running.store
    audit_before = len(await store.audit())
    dns.set("payments.test", ["127.0.0.2"], ttl=1)
    await wait_for(lambda: running.resolved("127.0.0.2:8080"), 10, message="resolved")
    assert await running.addresses() == [("127.0.0.2:8080", "dns:payments.test"),
                                         ("10.0.0.9:8080", "static")]
    assert await running.addresses("v2") == []  # ghost.test never resolves: no address

    dns.set("payments.test", ["127.0.0.3", "::1"], ttl=1)
    want = [("127.0.0.3:8080", "dns:payments.test"), ("[::1]:8080", "dns:payments.test"),
            ("10.0.0.9:8080", "static")]

    async def moved() -> bool:
        return await running.addresses() == want
    await wait_for(moved, 10, message="the new answer stored")
    key = store.keys.discovered("payments", "v1")
    stored = await store.kv.get(key)
    assert stored is not None

    dns.fail("payments.test")

    async def failing() -> dict[str, object]:
        report = await endpoints_report(store, "payments")
        (name,) = report["versions"][0]["names"]
        return name if name["status"] == "failing" else {}
    name = await wait_for(failing, 10, message="the failure reported")
    assert "SERVFAIL" in str(name["error"]) and name["failingSince"]
    assert await running.addresses() == want  # the last good set stays
    again = await store.kv.get(key)
    assert again is not None and again.mod_revision == stored.mod_revision  # not rewritten
    assert running.failing[-1] == 2  # payments.test and ghost.test
    report = await endpoints_report(store, "payments")
    (ghost,) = report["versions"][1]["names"]
    assert ghost["status"] == "failing" and "NXDOMAIN" in ghost["error"]

    dns.set("payments.test", ["127.0.0.2"], ttl=1)
    await wait_for(lambda: running.resolved("127.0.0.2:8080"), 10, message="resolves again")
    assert len(await store.audit()) == audit_before  # not user mutations: no audit entry


async def test_a_name_no_longer_listed_leaves_nothing_behind(
        running: Running, dns: DnsServer) -> None:
    store = running.store
    dns.set("payments.test", ["127.0.0.2"], ttl=30)
    await wait_for(lambda: running.resolved("127.0.0.2:8080"), 10, message="resolved")
    await store.apply(parse_yaml(UNNAMED), actor="test")

    async def gone() -> bool:
        return (await store.kv.get(store.keys.discovered("payments", "v1")) is None
                and await store.kv.get(store.keys.dns_name("payments.test")) is None)
    await wait_for(gone, 10, message="the name's keys deleted")
    assert await running.addresses() == [("10.0.0.9:8080", "static")]
    state, _ = await store.load()
    assert isinstance(state, DesiredState) and ("payments", "v1") not in state.discovered


async def test_more_names_than_one_etcd_transaction_holds(
        running: Running, dns: DnsServer) -> None:
    store = running.store
    many = ", ".join(f'"n{i}.test:80"' for i in range(150))  # etcd takes 128 ops per txn
    for i in range(0, 150, 2):
        dns.set(f"n{i}.test", [f"10.9.{i // 250}.{i % 250 + 1}"], ttl=30)
    await store.apply(parse_yaml(UPSTREAM.format(v1=many)), actor="test")

    async def every_status() -> bool:
        got = await store.kv.range(store.keys.dns)
        return len(got.kvs) == 151  # and ghost.test
    await wait_for(every_status, 20, message="a status key per name")

    async def resolved() -> bool:
        return len(await running.addresses()) == 75
    await wait_for(resolved, 20, message="the even names' addresses stored")


async def test_a_new_leader_keeps_the_last_good_set_of_a_dead_name(
        running: Running, dns: DnsServer) -> None:
    store = running.store
    dns.set("payments.test", ["127.0.0.2"], ttl=1)
    await wait_for(lambda: running.resolved("127.0.0.2:8080"), 10, message="resolved")
    dns.fail("payments.test")
    state, _ = await store.load()
    successor = NameResolver(store, DnsLookup([("127.0.0.1", dns.port)]), state)
    election = LeaderElection(store, "successor", ttl=2)
    election.start(successor.lead)
    try:
        await running.election.stop()  # resigns: the successor leads, its lookups fail

        async def taken_over() -> bool:
            holder = await store.kv.get(store.keys.leader)
            return holder is not None and holder.value == b"successor"
        await wait_for(taken_over, 10, message="the successor leads")
        key = store.keys.dns_name("payments.test")

        async def failing_seen() -> bool:
            got = await store.kv.get(key)
            return got is not None and b"SERVFAIL" in got.value
        await wait_for(failing_seen, 10, message="the successor's failed lookup recorded")
        assert await running.resolved("127.0.0.2:8080")  # not dropped by the new leader
    finally:
        await election.stop()
