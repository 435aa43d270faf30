"""Analysis across replicas against a real etcd: two replicas' windows reach etcd through
their AnalysisReporters, the leader's engine judges their sum, and failed checks in a row
roll the canary back; the check's numbers land in the rollout status."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.analysis import Counts, Window
from controlplane.analysis.window import decode, total
from controlplane.model import DesiredState, parse_yaml
from controlplane.model.status import Phase
from controlplane.rollout.analysis_reports import AnalysisReporter, EtcdAnalysis
from controlplane.rollout.engine import FleetProgress, RolloutEngine
from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.leader import Fence
from tests.support.states import PAYMENTS_EDGE

STATE = PAYMENTS_EDGE + """---
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: payments-v2}
spec:
  upstream: payments
  from: v1
  to: v2
  steps: [10, 50, 100]
  stepInterval: 10s
  analysis: {minRequests: 20, successRate: 0.95, failureLimit: 2}
"""
V2 = "payments|v2"


class AckedFleet:
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
        await s.apply(parse_yaml(STATE), actor="test")
        yield s
    finally:
        await s.close()
        await etcd.stop()


async def reported(store: Store, requests: int) -> bool:
    """The replicas' reports in etcd add up to `requests` to v2, all time."""
    got = await store.kv.range(store.keys.request_counts)
    reports = [decode(kv.value) for kv in got.kvs]
    return total(reports, V2, start=0, end=2e9).requests == requests


async def until_reported(store: Store, requests: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await reported(store, requests):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{requests} requests to v2 never reported")
        await asyncio.sleep(0.05)


async def test_two_replicas_reports_add_up_and_failures_in_a_row_roll_back(
    store: Store,
) -> None:
    clock = Clock()
    windows = [Window(), Window()]
    reporters = [AnalysisReporter(store, w, f"replica-{i}", clock=clock)
                 for i, w in enumerate(windows)]
    tasks = [asyncio.create_task(r.run()) for r in reporters]
    engine = RolloutEngine(store, AckedFleet(), identity="t", clock=clock,
                           analysis=EtcdAnalysis(store))
    fence = Fence()
    try:
        await engine.step(fence)  # Pending → Progressing 10%
        await engine.step(fence)  # the fleet ACKed: the step interval starts now
        state, _ = await store.load()
        started = state.status("payments-v2")
        assert started.applied and started.weight == 10.0
        t0 = started.since

        windows[0].add(t0 + 1, {V2: Counts(30, 6, 0)})
        windows[1].add(t0 + 2, {V2: Counts(30, 0, 0), "payments|v1": Counts(500)})
        await until_reported(store, 60)  # both replicas' reports
        clock.now = t0 + 5
        await engine.step(fence)  # before the interval: no check
        state, _ = await store.load()
        assert state.status("payments-v2").last_check is None

        clock.now = t0 + 10
        await engine.step(fence)
        state, _ = await store.load()
        status = state.status("payments-v2")
        assert (status.phase, status.failed_checks) == (Phase.PROGRESSING, 1)
        check = status.last_check
        assert check is not None and check["verdict"] == "failed"
        assert check["requests"] == 60 and check["successRate"] == pytest.approx(0.9)
        assert check["thresholds"]["successRate"] == 0.95

        # The next window starts at the failed check: only newer counts are judged.
        windows[0].add(t0 + 12, {V2: Counts(40, 10, 0)})
        await until_reported(store, 100)
        clock.now = t0 + 20
        await engine.step(fence)
        state, _ = await store.load()
        status = state.status("payments-v2")
        assert status.phase == Phase.ROLLING_BACK and status.weight == 0.0
        check = status.last_check
        assert check is not None and check["requests"] == 40
        assert "successRate 0.750 < 0.95" in status.message
        assert "failed 2 time(s) in a row" in status.reason

    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    for reporter in reporters:
        await reporter.close()
    assert await reported(store, 0)  # a stopped replica's counts leave with it
