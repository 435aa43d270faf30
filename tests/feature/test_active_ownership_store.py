"""One owner for an Upstream's `active`, through the real store and engine on a real etcd
(the fleet's ACKs scripted): apply refuses what would fool a rollout, a finished rollout
gives `active` back to apply, and every engine write is audited as `engine:<replica>`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from controlplane.errors import InvalidInputError
from controlplane.model import DesiredState, parse_yaml, to_stored
from controlplane.model.status import Phase
from controlplane.rollout.engine import FleetProgress, RolloutEngine
from controlplane.rollout.traffic import traffic_of
from controlplane.rollout.writer import write_status
from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.leader import Fence
from tests.support.states import PAYMENTS_EDGE

ROLLOUT = """
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: payments-v2}
spec: {upstream: payments, to: v2, steps: [50, 100], stepInterval: 10s, rollbackWindow: 1h}
"""
"""No `from`: apply fills in the upstream's active (v1)."""


class AckingFleet:
    async def progress(self, state: DesiredState, rollout: str) -> FleetProgress:
        return FleetProgress(1, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    etcd = await EmbeddedEtcd.start(tmp_path / "data")
    s = await Store.connect([etcd.endpoint], tls=etcd.tls)
    try:
        await s.apply(parse_yaml(PAYMENTS_EDGE), actor="admin:setup")
        yield s
    finally:
        await s.close()
        await etcd.stop()


async def dump(store: Store) -> dict[bytes, bytes]:
    got = await store.kv.range(b"/")
    return {kv.key: kv.value for kv in got.kvs}


def with_active(active: str) -> str:
    return PAYMENTS_EDGE.replace("active: v1", f"active: {active}")


async def test_an_omitted_from_is_stored_as_active_and_a_wrong_one_is_refused(
    store: Store
) -> None:
    before = await dump(store)
    with pytest.raises(InvalidInputError) as err:
        await store.apply(parse_yaml(ROLLOUT.replace("to: v2", "from: v2, to: v1")),
                          actor="admin:alice")
    assert [str(e) for e in err.value.errors] == [
        "Rollout/payments-v2: spec.from: 'v2' is not Upstream/payments's active version 'v1'; "
        "a rollout moves traffic from the version that has it (omit from to mean active)"]
    assert await dump(store) == before

    created = await store.apply(parse_yaml(ROLLOUT), actor="admin:alice")
    assert [c.action for c in created.changes] == ["created"]
    stored = await store.get("Rollout", "payments-v2")
    assert stored.spec.from_ == "v1"  # type: ignore[union-attr]
    again = await store.apply(parse_yaml(ROLLOUT), actor="admin:alice")
    assert [c.action for c in again.changes] == ["unchanged"]


async def test_a_running_rollout_owns_active_and_its_versions(store: Store) -> None:
    await store.apply(parse_yaml(ROLLOUT), actor="admin:alice")
    before = await dump(store)
    # Pending (no engine has looked yet: in serve it lasts one tick, too short for e2e).
    with pytest.raises(InvalidInputError, match=r"Rollout/payments-v2 is Pending"):
        await store.apply(parse_yaml(with_active("v2")), actor="admin:alice")
    assert await dump(store) == before
    engine = RolloutEngine(store, AckingFleet(), identity="t", clock=Clock())
    await engine.step(Fence())  # Pending → Progressing 50%
    state, _ = await store.load()
    assert state.status("payments-v2").phase == Phase.PROGRESSING
    before = await dump(store)
    with pytest.raises(InvalidInputError, match=r"Upstream/payments: spec.active: "
                       r"Rollout/payments-v2 is Progressing .*`controlplane rollout abort "
                       r"payments-v2`.*`controlplane rollout promote payments-v2`"):
        await store.apply(parse_yaml(with_active("v2")), actor="admin:alice")
    no_v2 = PAYMENTS_EDGE.replace(', v2: {endpoints: ["127.0.0.1:9002"]}', "")
    with pytest.raises(InvalidInputError, match=r"spec.versions: \['v2'\] are used by "
                       r"Rollout/payments-v2"):
        await store.apply(parse_yaml(no_v2), actor="admin:alice")
    assert await dump(store) == before


async def test_after_success_apply_owns_active_again_and_every_write_is_audited(
    store: Store
) -> None:
    await store.apply(parse_yaml(ROLLOUT), actor="admin:alice")
    clock = Clock()
    engine = RolloutEngine(store, AckingFleet(), identity="replica-1", clock=clock)
    for _ in range(8):  # start, ACK, interval, 100%, ACK: Succeeded
        await engine.step(Fence())
        clock.now += 11
    state, _ = await store.load()
    status = state.status("payments-v2")
    assert (status.phase, status.from_retained) == (Phase.SUCCEEDED, True)
    assert state.upstreams["payments"].spec.active == "v2"
    engine_entries = [e for e in await store.audit() if e.actor == "engine:replica-1"]
    assert [(e.kind, e.action) for e in engine_entries] == [
        ("Rollout", "rollout/Progressing"), ("Rollout", "rollout/Progressing"),
        ("Rollout", "rollout/Promoting"), ("Rollout", "rollout/Succeeded"),
        ("Upstream", "rollout/set-active"),
    ]
    set_active = engine_entries[-1]
    assert set_active.before is not None and set_active.after is not None
    assert (set_active.before["spec"]["active"], set_active.after["spec"]["active"]) == (
        "v1", "v2")

    result = await store.apply(parse_yaml(with_active("v1")), actor="admin:bob")
    assert [c.action for c in result.changes if c.kind == "Upstream"] == ["configured"]
    state, _ = await store.load()
    status = state.status("payments-v2")
    assert (status.phase, status.from_retained) == (Phase.SUCCEEDED, False)
    assert (status.active_changed_at is not None, status.active_changed_by) == (
        True, "admin:bob")
    assert traffic_of(state) == {}  # all traffic on `active` (v1) at once
    last_two = (await store.audit())[-2:]
    assert [(e.actor, e.kind, e.action) for e in last_two] == [
        ("admin:bob", "Upstream", "apply/configured"),
        ("admin:bob", "Rollout", "apply/superseded"),
    ]
    assert last_two[0].time == last_two[1].time  # one transaction

    clock.now += 7200  # past the rollback window: nothing left for the engine to retire
    audited = len(await store.audit())
    await engine.step(Fence())
    assert len(await store.audit()) == audited
    await store.delete("Rollout", "payments-v2", actor="admin:bob")
    state, _ = await store.load()
    assert state.upstreams["payments"].spec.active == "v1"


async def test_a_later_engine_write_does_not_take_active_back(store: Store) -> None:
    """Only entering Succeeded sets `active`: a routine write after (fleet counters) leaves
    the `active` an apply set since alone."""
    await store.apply(parse_yaml(ROLLOUT), actor="admin:alice")
    clock = Clock()
    engine = RolloutEngine(store, AckingFleet(), identity="t", clock=clock)
    for _ in range(8):
        await engine.step(Fence())
        clock.now += 11
    await store.apply(parse_yaml(with_active("v1")), actor="admin:bob")
    state, revisions, _ = await store.read()
    status = state.status("payments-v2")
    assert status.phase == Phase.SUCCEEDED
    written = await write_status(store, state, revisions, "payments-v2",
                                 replace(status, proxies_acked=2, proxies_total=2),
                                 actor="engine:t", audit=False)
    assert written
    state, _ = await store.load()
    assert state.upstreams["payments"].spec.active == "v1"
    assert state.status("payments-v2").proxies_total == 2


async def test_an_active_change_read_before_a_rollout_was_created_cannot_land(
    store: Store
) -> None:
    """Two applies racing: one creates a rollout from v1, the other read the state before
    and sets active v2. The second's guard on the upstream fails, so it re-reads, sees the
    rollout and is refused: never a rollout whose `from` is not `active`."""
    key = store.keys.resource("Upstream", "payments")
    got = await store.kv.get(key)
    assert got is not None
    read_before = got.mod_revision
    await store.apply(parse_yaml(ROLLOUT), actor="admin:alice")
    switched = parse_yaml(with_active("v2"))[2]
    landed = await store.commit(puts={key: to_stored(switched)}, expect={key: read_before},
                                audit=[])
    assert landed is None
    state, _ = await store.load()
    assert state.upstreams["payments"].spec.active == "v1"
