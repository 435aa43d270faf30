"""Leader election on a real etcd: one leader at a time, resign, lease loss, fenced writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from controlplane.store import AuditRecord, EmbeddedEtcd, Fence, LeaderElection, Store
from tests.support.wait import wait_for

TTL = 2  # etcd's shortest lease here (it rounds shorter ones up)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    etcd = await EmbeddedEtcd.start(tmp_path / "data")
    s = await Store.connect([etcd.endpoint], tls=etcd.tls)
    try:
        yield s
    finally:
        await s.close()
        await etcd.stop()


class Leading:
    """A `lead` callback that records its fences and whether it was cancelled."""

    def __init__(self) -> None:
        self.fences: list[Fence] = []
        self.cancelled = 0

    def __call__(self) -> Callable[[Fence], Coroutine[Any, Any, None]]:
        async def lead(fence: Fence) -> None:
            self.fences.append(fence)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return lead


async def fenced_write(store: Store, fence: Fence, value: bytes) -> int | None:
    key = store.keys.status("Rollout", "r")
    current = await store.kv.get(key)
    return await store.commit(
        puts={key: value}, expect={key: 0 if current is None else current.mod_revision},
        audit=[AuditRecord(actor="engine", action="rollout/Progressing", kind="Rollout",
                           name="r")],
        lease=fence.lease, expect_values=fence.values,
    )


async def test_one_leader_and_a_resign_hands_over(store: Store) -> None:
    a, b = LeaderElection(store, "a", ttl=TTL), LeaderElection(store, "b", ttl=TTL)
    lead_a, lead_b = Leading(), Leading()
    a.start(lead_a())
    try:
        await wait_for(lambda: a.is_leader and lead_a.fences, timeout=5)
        b.start(lead_b())
        holder = await store.kv.get(store.keys.leader)
        assert holder is not None and holder.value == b"a" and holder.lease == a.lease_id
        assert lead_a.fences[0] == Fence(a.lease_id, {store.keys.leader: b"a"})
        assert await fenced_write(store, lead_a.fences[0], b"1") is not None
        await asyncio.sleep(TTL)  # longer than b's polling and a's keep-alive period
        assert a.is_leader and not b.is_leader and not lead_b.fences

        await a.stop()  # resigns: the key goes with the lease, at once
        assert lead_a.cancelled == 1 and not a.is_leader and a.lease_id is None
        await wait_for(lambda: b.is_leader, timeout=TTL, message="b took over")
        assert await fenced_write(store, lead_a.fences[0], b"2") is None  # deposed: refused
        assert await fenced_write(store, b.fence, b"3") is not None
        # The statuses the leaders wrote outlive their leases.
        got = await store.kv.get(store.keys.status("Rollout", "r"))
        assert got is not None and got.value == b"3" and got.lease == 0
        assert len(await store.audit()) == 2 and await store.verify_audit() == []
    finally:
        await a.stop()
        await b.stop()
    assert await store.kv.get(store.keys.leader) is None


async def test_a_lost_lease_ends_the_leadership(store: Store) -> None:
    a, b = LeaderElection(store, "a", ttl=TTL), LeaderElection(store, "b", ttl=TTL)
    lead_a, lead_b = Leading(), Leading()
    a.start(lead_a())
    try:
        await wait_for(lambda: a.is_leader, timeout=5)
        b.start(lead_b())
        assert a.lease_id is not None
        await store.kv.revoke(a.lease_id)  # as if a was partitioned past its TTL
        await wait_for(lambda: b.is_leader, timeout=2 * TTL, message="b took over")
        await wait_for(lambda: lead_a.cancelled == 1, timeout=TTL,
                       message="a noticed and stopped leading")
        assert await fenced_write(store, lead_a.fences[0], b"late") is None
        holder = await store.kv.get(store.keys.leader)
        assert holder is not None and holder.value == b"b"
    finally:
        await a.stop()
        await b.stop()
