"""The per-replica report both the fleet and the analysis reports write (`LeasedReport`),
against a real etcd: held by a lease, only changed keys written, stale keys deleted, a
lost lease granted again with every key rewritten, a failed write retried until etcd is
back, and the report deleted on close."""

from __future__ import annotations

import asyncio

from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.report import LeasedReport
from tests.support.wait import wait_for

A, B, C = b"/t/report/a", b"/t/report/b", b"/t/report/c"


async def held(store: Store) -> dict[bytes, bytes]:
    got = await store.kv.range(b"/t/report/")
    return {kv.key: kv.value for kv in got.kvs}


async def test_changed_keys_only_stale_keys_deleted_all_under_one_lease(store: Store) -> None:
    report = LeasedReport(store.kv, "test report")
    await report.write({A: b"1", B: b"1"})
    first = {k: await store.kv.get(k) for k in (A, B)}
    await report.write({A: b"1", C: b"2"})  # A unchanged, B gone, C new

    assert await held(store) == {A: b"1", C: b"2"}
    a, c = await store.kv.get(A), await store.kv.get(C)
    old_a = first[A]
    assert a is not None and c is not None and old_a is not None
    assert a.mod_revision == old_a.mod_revision, "an unchanged value is not written again"
    assert a.lease != 0 and c.lease == a.lease, "every key is held by the report's lease"

    await report.close()
    assert await held(store) == {}


async def test_a_lost_lease_is_granted_again_and_every_key_rewritten(store: Store) -> None:
    report = LeasedReport(store.kv, "test report", ttl=3)
    await report.write({A: b"1", B: b"2"})
    before = await store.kv.get(A)
    assert before is not None
    await store.kv.revoke(before.lease)  # as when the replica was paused past the TTL
    assert await held(store) == {}

    async def whole_again() -> bool:
        await report.write({A: b"1", B: b"2"})  # the lease is checked every ttl / 3
        return await held(store) == {A: b"1", B: b"2"}

    await wait_for(whole_again, timeout=5, interval=0.2,  # type: ignore[arg-type]
                   message="the report is whole again")
    after = await store.kv.get(A)
    assert after is not None and after.lease not in (0, before.lease)
    await report.close()


async def test_a_failed_write_is_retried_until_etcd_is_back(
    etcd: EmbeddedEtcd, store: Store,
) -> None:
    errors: list[int] = []
    report = LeasedReport(store.kv, "test report", retry_s=0.2,
                          on_error=lambda: errors.append(1))
    values = {A: b"1"}
    await etcd.stop()
    task = asyncio.create_task(report.run(lambda: values, lambda: asyncio.sleep(0.1)))
    try:
        await wait_for(lambda: errors and report.failing, timeout=30,
                       message="the failed write is counted and said")
        restarted = await EmbeddedEtcd.start(etcd.data_dir)
        etcd.proc = restarted.proc  # the fixture stops whichever runs now
        assert restarted.endpoint == etcd.endpoint
        await wait_for(lambda: report.failing == "", timeout=30, interval=0.1,
                       message="the write succeeds once etcd is back")
        assert await held(store) == {A: b"1"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await report.close()
    assert await held(store) == {}
