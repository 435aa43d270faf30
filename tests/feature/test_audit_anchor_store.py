"""The keyed store and its anchor against a real etcd: an old plain log sealed when the
key arrives, concurrent writes anchored in order, a truncated log never anchored over."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from controlplane.model import parse_yaml
from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.audit import AuditEntry, AuditHead, AuditRecord
from controlplane.store.audit_anchor import AuditAnchor

KEY = b"a" * 32


def upstream(name: str) -> str:
    return f"""
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: {name}}}
spec: {{active: v1, versions: {{v1: {{endpoints: ["127.0.0.1:9001"]}}}}}}
"""


async def test_an_old_plain_log_is_sealed_by_a_keyed_entry_when_the_key_arrives(
    store: Store, tmp_path: Path
) -> None:
    await store.apply(parse_yaml(upstream("a") + "---" + upstream("b")), actor="alice")
    assert [e.keyed for e in await store.audit()] == [False, False]
    anchor = AuditAnchor(tmp_path / "audit.anchor")
    await store.key_audit(KEY, anchor)
    entries = await store.audit()
    assert [(e.seq, e.action, e.keyed) for e in entries] == [
        (1, "apply/created", False), (2, "apply/created", False), (3, "audit/keyed", True)]
    assert entries[2].prev_hash == entries[1].hash
    assert anchor.head == AuditHead(3, entries[2].hash)
    assert await store.verify_audit() == []
    await store.key_audit(KEY, anchor)  # a restart: nothing more to seal
    assert len(await store.audit()) == 3


async def test_replicas_starting_together_seal_an_old_log_once(
    etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    stores = [await Store.connect([etcd.endpoint], tls=etcd.tls) for _ in range(3)]
    try:
        await stores[0].apply(parse_yaml(upstream("a")), actor="alice")
        await asyncio.gather(*(s.key_audit(KEY, AuditAnchor(tmp_path / str(i) / "anchor"))
                               for i, s in enumerate(stores)))
        assert [e.action for e in await stores[0].audit()] == ["apply/created",
                                                               "audit/keyed"]
        assert await stores[1].verify_audit() == []
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_writes_anchor_the_last_head_and_contradict_nothing(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    anchor = AuditAnchor(tmp_path / "audit.anchor")
    await store.key_audit(KEY, anchor)
    caplog.set_level(logging.ERROR)
    await asyncio.gather(*(store.apply(parse_yaml(upstream(f"u{i}")), actor="alice")
                           for i in range(8)))
    entries = await store.audit()
    assert len(entries) == 8 and all(e.keyed for e in entries)
    assert anchor.head == AuditHead(8, entries[-1].hash)
    # One of our writes resuming after a later one: behind the anchor, not against it.
    late = AuditHead(5, entries[4].hash)
    assert await anchor.follow(store.kv, store.keys, late, via=AuditHead(4, entries[3].hash),
                               behind_ok=True) == ""
    assert "contradicts" not in caplog.text
    assert anchor.head == AuditHead(8, entries[-1].hash)
    assert await store.verify_audit() == []
    assert "this replica saw entry 8" in await anchor.follow(store.kv, store.keys, late)


async def test_writes_after_a_truncation_do_not_move_the_anchor(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    anchor = AuditAnchor(tmp_path / "audit.anchor")
    await store.key_audit(KEY, anchor)
    for name in ("a", "b", "c"):
        await store.apply(parse_yaml(upstream(name)), actor="alice")
    seen = anchor.head
    assert seen.seq == 3
    second = (await store.audit())[1]
    await store.kv.delete(store.keys.audit_entry(3))
    await store.kv.put(store.keys.audit_head,
                       json.dumps({"seq": 2, "hash": second.hash}).encode())

    with caplog.at_level(logging.ERROR):
        for name in ("d", "e"):  # the log grows past the anchor on another chain
            await store.apply(parse_yaml(upstream(name)), actor="alice")
    assert anchor.head == seen
    assert "contradicts" in caplog.text and str(anchor.path) in caplog.text
    problems = await store.verify_audit()
    assert problems == [f"entry 3 is not the one this replica saw (anchored in "
                        f"{anchor.path}): the log was rewritten at or before entry 3"]
    assert AuditAnchor(anchor.path).head == seen  # nor did verify move it


async def test_a_plain_end_after_an_anchored_keyed_log_is_not_sealed_over(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    anchor = AuditAnchor(tmp_path / "audit.anchor")
    await store.key_audit(KEY, anchor)
    await store.apply(parse_yaml(upstream("a")), actor="alice")
    # Someone without the key appends a plain entry and moves the head to it.
    forged = AuditEntry.chain(AuditRecord(actor="mallory", action="delete", kind="Upstream",
                                          name="a"),
                              seq=2, time=1.0, prev_hash=anchor.head.hash)
    await store.kv.put(store.keys.audit_entry(2), forged.to_json())
    await store.kv.put(store.keys.audit_head, AuditHead(2, forged.hash).to_json())

    with caplog.at_level(logging.ERROR):
        await store.key_audit(KEY, AuditAnchor(anchor.path))  # a restart
    assert "chained with plain SHA-256" in caplog.text
    assert [e.action for e in await store.audit()] == ["apply/created", "delete"]
    assert any("entry 2 is chained with plain SHA-256 after keyed entries" in p
               for p in await store.verify_audit())


async def test_an_unreadable_head_does_not_stop_the_start(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await store.kv.put(store.keys.audit_head, b"garbage")
    with caplog.at_level(logging.ERROR):
        await store.key_audit(KEY, AuditAnchor(tmp_path / "audit.anchor"))
    assert "unreadable" in caplog.text
    assert any("audit-head is unreadable" in p for p in await store.verify_audit())


async def test_a_replica_that_only_verifies_anchors_too_and_then_sees_truncation(
    etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    writer, reader = [await Store.connect([etcd.endpoint], tls=etcd.tls) for _ in range(2)]
    try:
        await writer.key_audit(KEY, AuditAnchor(tmp_path / "a" / "audit.anchor"))
        anchor = AuditAnchor(tmp_path / "b" / "audit.anchor")
        await reader.key_audit(KEY, anchor)
        for name in ("a", "b", "c"):
            await writer.apply(parse_yaml(upstream(name)), actor="alice")
        assert anchor.head == AuditHead()  # the other replica wrote them
        assert await reader.verify_audit() == []
        assert anchor.head.seq == 3  # verified: anchored
        await writer.kv.delete(writer.keys.audit_entry(3))
        await writer.kv.put(writer.keys.audit_head,
                            AuditHead(2, (await writer.audit())[1].hash).to_json())
        assert await reader.verify_audit() == [
            f"entry 3 missing: the log ends at 2 but this replica saw 3 (anchored in "
            f"{anchor.path}): truncated"]
    finally:
        for s in (writer, reader):
            await s.close()
