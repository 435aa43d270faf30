"""The push budget: bytes written at once across streams are bounded, nobody starves."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.xds.budget import PushBudget


class Write:
    """A write whose transport accepts it only when told to."""

    def __init__(self, budget: PushBudget, size: int, log: list[str], name: str) -> None:
        self.started = asyncio.Event()
        self.accept = asyncio.Event()
        self.task = asyncio.create_task(budget.write(size, self.send))
        self._log, self._name = log, name

    async def send(self) -> None:
        self._log.append(self._name)
        self.started.set()
        await self.accept.wait()


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_writes_wait_for_room_in_order_and_never_beyond_the_limit() -> None:
    budget = PushBudget(limit=100, hold_s=60)
    log: list[str] = []
    a = Write(budget, 60, log, "a")
    b = Write(budget, 30, log, "b")
    c = Write(budget, 50, log, "c")  # does not fit next to a and b
    d = Write(budget, 5, log, "d")  # would fit, but waits its turn behind c
    await turns()
    assert log == ["a", "b"] and budget.used == 90
    a.accept.set()
    await turns()
    assert log == ["a", "b", "c", "d"] and budget.used == 85
    for w in (b, c, d):
        w.accept.set()
    await asyncio.gather(a.task, b.task, c.task, d.task)
    assert budget.used == 0


async def test_a_write_larger_than_the_budget_goes_alone() -> None:
    budget = PushBudget(limit=100, hold_s=60)
    log: list[str] = []
    small = Write(budget, 10, log, "small")
    huge = Write(budget, 10_000, log, "huge")
    await turns()
    assert log == ["small"]
    small.accept.set()
    await turns()
    assert log == ["small", "huge"] and budget.used == 100
    huge.accept.set()
    await huge.task
    assert budget.used == 0


async def test_a_write_stuck_behind_one_that_never_completes_goes_after_hold_s() -> None:
    budget = PushBudget(limit=100, hold_s=0.05)
    log: list[str] = []
    stalled = Write(budget, 100, log, "stalled")  # a proxy that stopped reading
    other = Write(budget, 100, log, "other")
    await asyncio.wait_for(other.started.wait(), 5)
    assert log == ["stalled", "other"]
    other.accept.set()
    await other.task
    stalled.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stalled.task
    assert budget.used == 0


async def test_a_waiter_whose_stream_ends_does_not_hold_up_the_rest() -> None:
    budget = PushBudget(limit=100, hold_s=60)
    log: list[str] = []
    first = Write(budget, 80, log, "first")
    gone = Write(budget, 50, log, "gone")
    after = Write(budget, 10, log, "after")
    await turns()
    gone.task.cancel()
    await turns()
    assert log == ["first", "after"]  # the small write no longer waits behind `gone`
    first.accept.set()
    after.accept.set()
    await asyncio.gather(first.task, after.task)
    assert budget.used == 0
