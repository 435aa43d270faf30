"""The publisher between the store and the cache: a lone change goes out at once, a burst
of changes is coalesced (at most one publish per hold-off), nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from controlplane.model import DesiredState, parse_yaml
from controlplane.publish import HOLD_OFF_S, Publisher
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
