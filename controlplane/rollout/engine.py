"""The rollout engine: the leader's loop that feeds events to the state machine and
writes its decisions, fenced by the leader's lease.

It reads everything from etcd (never from memory), so a restarted or newly elected
leader continues exactly where the last one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from controlplane.analysis import Check
from controlplane.analysis.health import Membership
from controlplane.errors import ControlPlaneError, StoreUnavailableError
from controlplane.model import DesiredState
from controlplane.model.status import Phase, RolloutStatus
from controlplane.rollout.gate import health_gate
from controlplane.rollout.machine import (
    AnalysisDone,
    Event,
    FleetAcked,
    Nacked,
    Tick,
    post_switch_analysis,
    transition,
)
from controlplane.rollout.writer import apply_decision, engine_actor, write_status
from controlplane.store import Store
from controlplane.store.leader import Fence

log = logging.getLogger(__name__)

TICK_S = 0.25
HEALTH_WAIT = "waiting for the endpoints of "
EMPTY_WAIT = "waiting for proxies: no proxy of group "


@dataclass(frozen=True)
class FleetProgress:
    """How far the proxies that carry a rollout's upstream are on its current config."""

    acked: int
    total: int
    nack: str | None = None
    groups: tuple[str, ...] = ()
    """The proxy groups that route to the upstream: the ones that must carry the step."""

    def empty(self) -> bool:
        """No proxy is connected, though groups route to the upstream: nothing carries
        the step, so nothing has ACKed it (not "0 of 0, all ACKed")."""
        return self.total == 0 and bool(self.groups)

    def enough(self, fraction: float) -> bool:
        """At least `fraction` of the connected proxies ACKed (all of them at 1.0)."""
        return self.acked >= math.ceil(self.total * fraction - 1e-9)


class FleetView(Protocol):
    """Tells whether the fleet carries the config a state implies (the wiring's job:
    it knows the translation and the proxies' ACKs)."""

    async def progress(self, state: DesiredState, rollout: str) -> FleetProgress: ...


class AnalysisProvider(Protocol):
    """Judges a rollout's `to` version on the fleet's metrics (passed, failed, inconclusive)."""

    async def check(self, state: DesiredState, rollout: str, now: float) -> Check: ...


class HealthView(Protocol):
    """What the fleet's Envoys report of one cluster's endpoint health."""

    async def health(self, cluster: str) -> Membership: ...


def analysis_due(state: DesiredState, rollout: str, status: RolloutStatus, now: float) -> bool:
    """A check counts only on an applied step whose interval has elapsed (the machine's rule)."""
    spec = state.rollouts[rollout].spec
    checked = (status.phase == Phase.PROGRESSING and status.applied) or post_switch_analysis(
        spec, status)
    return (spec.analysis is not None and checked
            and now - status.since >= spec.step_interval.seconds)


class RolloutEngine:
    """Drives every rollout in etcd, one transition at a time, while this replica leads."""

    def __init__(
        self, store: Store, fleet: FleetView, *, identity: str,
        clock: Callable[[], float] = time.time, tick_s: float = TICK_S,
        analysis: AnalysisProvider | None = None, health: HealthView | None = None,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._analysis = analysis
        self._health = health
        # When this leader first saw a step's config ACKed everywhere: health reports
        # count only from then (a new leader starts afresh, which only waits longer).
        self._acked_at: dict[tuple[str, int, float, str], float] = {}
        self._actor = engine_actor(identity)
        self._clock = clock
        self._tick_s = tick_s
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Something changed (state, ACKs): look again now rather than at the next tick."""
        self._wake.set()

    async def lead(self, fence: Fence) -> None:
        """Run until cancelled (the leadership ends)."""
        while True:
            try:
                await self.step(fence)
            except StoreUnavailableError as exc:
                log.warning("rollouts hold: %s", exc)  # no step and no rollback on stale data
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (a poke
            # as the leadership ends or serve stops), and this loop would go on.
            try:
                async with asyncio.timeout(self._tick_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def step(self, fence: Fence) -> None:
        """One pass over all rollouts: at most one transition each. A rollout that cannot
        be driven (its state does not translate, say) is logged and skipped; the others
        go on. etcd being down holds them all (StoreUnavailableError goes up)."""
        state, revisions, _ = await self._store.read()
        for name in state.rollouts:
            try:
                await self._step_one(state, revisions, name, fence)
            except StoreUnavailableError:
                raise
            except ControlPlaneError as exc:
                log.error("rollout %s held: %s", name, exc)

    async def _step_one(self, state: DesiredState, revisions: Mapping[bytes, int], name: str,
                        fence: Fence) -> None:
        status = state.status(name)
        if not (status.active or status.from_retained):
            return
        now = self._clock()
        progress = await self._fleet.progress(state, name)
        events: list[Event] = []
        spec = state.rollouts[name].spec
        waiting = ""
        if progress.nack:
            events.append(Nacked(now, progress.nack))
        elif progress.empty() and not spec.allow_empty_fleet:
            waiting = (f"{EMPTY_WAIT}{', '.join(progress.groups)} is connected; set "
                       "allowEmptyFleet: true to move traffic no proxy carries")
        elif progress.enough(spec.ack_fraction):
            waiting = await self._unhealthy(state, name, status, now)
            if not waiting:
                events.append(FleetAcked(now))
        check: Check | None = None
        if self._analysis is not None and analysis_due(state, name, status, now):
            check = await self._analysis.check(state, name, now)
            events.append(AnalysisDone(now, check.verdict, check.detail))
        events.append(Tick(now, waiting))
        for event in events:
            decision = transition(spec, status, event)
            if decision.status is not None:
                new = replace(decision.status, proxies_acked=progress.acked,
                              proxies_total=progress.total)
                if isinstance(event, FleetAcked) and new.message.startswith(HEALTH_WAIT):
                    new = replace(new, message="")
                if isinstance(event, AnalysisDone) and check is not None:
                    new = replace(new, last_check=check.document())
                # apply_decision logs the transition (one structured line).
                await apply_decision(
                    self._store, state, revisions, name, replace(decision, status=new),
                    actor=self._actor, fence=fence,
                )
                break
        else:
            message = waiting or status.message
            if (progress.acked, progress.total, message) != (
                status.proxies_acked, status.proxies_total, status.message
            ):
                await write_status(
                    self._store, state, revisions, name,
                    replace(status, proxies_acked=progress.acked,
                            proxies_total=progress.total, message=message),
                    actor=self._actor, audit=False, fence=fence,
                )

    async def _unhealthy(self, state: DesiredState, name: str, status: RolloutStatus,
                         now: float) -> str:
        """Why the ACKed step is not in force yet ("" when it is): its new endpoints are
        not yet healthy on every proxy (blue-green preview, rolling batches)."""
        gate = health_gate(state, name, status)
        if gate is None or self._health is None:
            return ""
        key = (name, status.step, status.weight, str(status.phase))
        acked_at = self._acked_at.setdefault(key, now)
        for stale in [k for k in self._acked_at if k[0] == name and k != key]:
            del self._acked_at[stale]
        membership = await self._health.health(gate.cluster)
        if membership.ready(gate.expected, acked_at):
            return ""
        return (f"{HEALTH_WAIT}{gate.cluster} to pass health checks: "
                f"{membership.describe(gate.expected)}")
