"""The rollout engine against a real etcd, with the fleet's answers scripted: steps wait
for ACKs, a NACK halts at the last good step, and a deposed leader cannot write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.errors import TranslationError
from controlplane.fleet import EtcdFleet
from controlplane.model import DesiredState, parse_yaml
from controlplane.model.status import Phase
from controlplane.rollout.engine import FleetProgress, RolloutEngine
from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.leader import Fence, LeaderElection
from tests.support.states import with_rollout

STATE = with_rollout()


class ScriptedFleet:
    """The fleet's answer, set by the test (the real one reads proxies' ACKs)."""

    def __init__(self) -> None:
        self.answer = FleetProgress(0, 1)

    async def progress(self, state: DesiredState, rollout: str) -> FleetProgress:
        return self.answer


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
        await s.apply(parse_yaml(STATE), actor="test")
        yield s
    finally:
        await s.close()
        await etcd.stop()


async def phase(store: Store) -> tuple[Phase, int, float, str]:
    state, _ = await store.load()
    st = state.status("payments-v2")
    return st.phase, st.step, st.weight, st.message


async def test_steps_wait_for_acks_and_a_nack_halts_at_the_last_good_step(store: Store) -> None:
    fleet, clock = ScriptedFleet(), Clock()
    engine = RolloutEngine(store, fleet, identity="t", clock=clock)
    fence = Fence()
    await engine.step(fence)
    assert await phase(store) == (Phase.PROGRESSING, 0, 10.0, "")
    clock.now += 50  # longer than the step interval, shorter than the ACK timeout
    await engine.step(fence)  # not ACKed yet: no next step
    state, _ = await store.load()
    assert not state.status("payments-v2").applied
    fleet.answer = FleetProgress(1, 1)
    await engine.step(fence)
    state, _ = await store.load()
    assert state.status("payments-v2").applied
    clock.now += 10
    await engine.step(fence)
    assert (await phase(store))[:3] == (Phase.PROGRESSING, 1, 50.0)

    fleet.answer = FleetProgress(0, 1, nack="edge-1: cluster payments|v2 rejected")
    await engine.step(fence)
    assert await phase(store) == (Phase.PAUSED, 0, 10.0, "edge-1: cluster payments|v2 rejected")
    entries = await store.audit()
    paused = [e for e in entries if e.action == "rollout/Paused"]
    assert paused and "NACK" in paused[-1].reason and paused[-1].actor == "engine:t"


async def test_a_deposed_leader_cannot_write(store: Store) -> None:
    election = LeaderElection(store, "replica-a", ttl=5)
    lease = await election._campaign()
    fence = Fence(lease, {store.keys.leader: b"replica-a"})
    engine = RolloutEngine(store, ScriptedFleet(), identity="replica-a", clock=Clock())
    await engine.step(fence)
    assert (await phase(store))[0] == Phase.PROGRESSING

    await store.kv.revoke(lease)  # the lease lapses: partitioned, paused, or too slow
    other = LeaderElection(store, "replica-b", ttl=5)
    await other._campaign()
    before = await store.audit()
    await engine.step(fence)  # a late write from the old leader
    await engine.step(fence)
    assert await store.audit() == before
    assert (await phase(store))[0] == Phase.PROGRESSING


class BrokenFor(ScriptedFleet):
    """Cannot judge one rollout (its state does not translate, say)."""

    def __init__(self, broken: str) -> None:
        super().__init__()
        self.broken = broken

    async def progress(self, state: DesiredState, rollout: str) -> FleetProgress:
        if rollout == self.broken:
            raise TranslationError(f"Rollout/{rollout}: cannot translate")
        return await super().progress(state, rollout)


async def test_one_rollout_that_cannot_be_driven_does_not_hold_the_others(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.apply(parse_yaml("""
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: ledger}
spec: {active: v1, versions: {v1: {endpoints: ["127.0.0.1:9101"]},
                              v2: {endpoints: ["127.0.0.1:9102"]}}}
---
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: a-ledger-v2}
spec: {upstream: ledger, from: v1, to: v2}
"""), actor="test")
    engine = RolloutEngine(store, BrokenFor("a-ledger-v2"), identity="t", clock=Clock())
    await engine.step(Fence())  # a-ledger-v2 sorts first and fails
    assert (await phase(store))[:3] == (Phase.PROGRESSING, 0, 10.0)
    assert "rollout a-ledger-v2 held: Rollout/a-ledger-v2: cannot translate" in caplog.text


@pytest.mark.parametrize("allow", [False, True], ids=["waits", "allowed"])
async def test_no_connected_proxy_is_not_an_acked_step(store: Store, allow: bool) -> None:
    # The real fleet view over etcd, where no replica reports a proxy of group `edge`.
    if allow:
        allowed = STATE.replace("stepInterval:", "allowEmptyFleet: true, stepInterval:")
        await store.apply(parse_yaml(allowed), actor="test")
    clock = Clock()
    engine = RolloutEngine(store, EtcdFleet(store), identity="t", clock=clock)
    fence = Fence()
    await engine.step(fence)  # Pending -> step 0
    await engine.step(fence)
    state, _ = await store.load()
    status = state.status("payments-v2")
    assert (status.proxies_acked, status.proxies_total) == (0, 0)
    if allow:
        assert status.applied and status.message == ""
        return
    assert not status.applied
    assert status.message.startswith("waiting for proxies: no proxy of group edge is connected")
    clock.now += 61  # past the ACK timeout (60 s)
    await engine.step(fence)
    got = await phase(store)
    assert got[0] == Phase.PAUSED and "no proxy of group edge" in got[3]
