"""The publisher between the store and the cache: a lone change goes out at once, a burst
of changes is coalesced (at most one publish per hold-off), nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from controlplane.model import DesiredState, parse_yaml
from controlplane.publish import HOLD_OFF_S, OFFLOAD_SIZE, Publisher
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.snapshot import Snapshot
from tests.support.states import PAYMENTS_EDGE
from tests.support.wait import wait_for


def _state(active: str) -> DesiredState:
    return DesiredState.of(parse_yaml(PAYMENTS_EDGE.replace("active: v1", f"active: {active}")))


class Counting:
    def __init__(self) -> None:
        self.publishes = 0
        self.last: Mapping[str, Snapshot] = {}

    def __call__(self, published: Mapping[str, Snapshot]) -> None:
        self.publishes += 1
        self.last = published


async def test_a_lone_change_goes_out_on_the_next_loop_turn() -> None:
    counting = Counting()
    publisher = Publisher(SnapshotCache(), on_published=counting)
    publisher.update(_state("v1"))
    await asyncio.sleep(0)  # one loop turn, no hold-off
    await asyncio.sleep(0)
    assert counting.publishes == 1


async def test_a_burst_is_coalesced_and_its_last_state_wins() -> None:
    counting = Counting()
    cache = SnapshotCache()
    publisher = Publisher(cache, on_published=counting)
    states = [_state("v1"), _state("v2")]
    # 200 changes spread over ~8 hold-offs: bounded publishes, never one per change.
    loop = asyncio.get_running_loop()
    end = loop.time() + 8 * HOLD_OFF_S
    changes = 0
    while loop.time() < end:
        publisher.update(states[changes % 2])
        changes += 1
        await asyncio.sleep(HOLD_OFF_S / 25)
    publisher.update(states[1])  # the last word
    await wait_for(lambda: counting.publishes and publisher._timer is None, 5,
                   message="the burst's last publish")
    assert changes >= 50
    assert counting.publishes <= 8 + 3, (counting.publishes, changes)
    snapshot = cache.get("edge")
    assert snapshot is not None and snapshot.versions == counting.last["edge"].versions
    routes = snapshot.resources("type.googleapis.com/envoy.config.route.v3.RouteConfiguration")
    assert any(b"payments|v2" in entry.packed.value for entry in routes.values()), (
        "the last state was published")


def _large(active: str) -> DesiredState:
    # Four times the threshold: long enough to translate that the loop turns many times.
    many = ", ".join(f'"10.{i // 62500}.{i // 250 % 250}.{i % 250}:8080"'
                     for i in range(4 * OFFLOAD_SIZE))
    return _state(active).with_applied(parse_yaml(
        PAYMENTS_EDGE.replace("active: v1", f"active: {active}")
        .replace('v1: {endpoints: ["127.0.0.1:9001"]}', f"v1: {{endpoints: [{many}]}}")))


async def test_a_large_state_is_translated_while_the_loop_goes_on_serving() -> None:
    counting = Counting()
    cache = SnapshotCache()
    ticks = 0
    ticks_at_publish: list[int] = []

    def published(snapshots: Mapping[str, Snapshot]) -> None:
        ticks_at_publish.append(ticks)
        counting(snapshots)

    publisher = Publisher(cache, on_published=published)

    async def heartbeat() -> None:  # stands for the xDS streams and admin calls
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    beating = asyncio.create_task(heartbeat())
    try:
        await asyncio.sleep(0.01)
        ticks = 0
        publisher.update(_large("v1"))
        await wait_for(lambda: counting.publishes == 1, 30, message="the large publish")
        # Translated inline, the loop would not turn (at most the tick already due)
        # until it was done.
        assert ticks_at_publish[0] >= 2, ticks_at_publish
        # A change during an offloaded publish goes out after it; the last state wins.
        publisher.update(_large("v2"))
        await asyncio.sleep(0)
        publisher.update(_large("v1"))
        publisher.update(_large("v2"))
        await wait_for(lambda: publisher._running is None and publisher._timer is None
                       and counting.publishes >= 2, 30, message="the last publish")
        snapshot = cache.get("edge")
        assert snapshot is not None and snapshot.versions == counting.last["edge"].versions
        routes = snapshot.resources(
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration")
        assert any(b"payments|v2" in e.packed.value for e in routes.values())
    finally:
        beating.cancel()
