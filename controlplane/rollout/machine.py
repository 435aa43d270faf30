"""The rollout state machine as a pure function: `transition(spec, status, event) -> Decision`.

Phases (README, "A canary, step by step"):

    Pending → Progressing(step i) ⇄ Paused → Promoting → Succeeded
    any active phase → RollingBack → RolledBack     (analysis failed, NACK, operator rollback)
    any active phase → Aborted                      (operator; traffic back to `from`)

No I/O and no clock: time comes in on the events. The async driver applies a
decision with a compare-and-swap write of the new status and an audit entry.
A step's weight is in force only once the fleet has ACKed the config carrying it
(`applied`); the step interval counts from that moment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controlplane.model.resources import RolloutSpec
from controlplane.model.status import ACTIVE_PHASES, FINAL_PHASES, Phase, RolloutStatus

# ---- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Time passed; `now` is seconds since the epoch. `waiting` says what the current
    step still waits for besides the fleet's ACK (healthy endpoints), if anything."""

    now: float
    waiting: str = ""


@dataclass(frozen=True)
class FleetAcked:
    """Every proxy that must carry the current step's config has ACKed it."""

    now: float


@dataclass(frozen=True)
class Nacked:
    """A proxy rejected the current step's config; Envoy keeps its last good one."""

    now: float
    detail: str


@dataclass(frozen=True)
class AnalysisDone:
    """A check of the `to` version: passed, failed, or inconclusive (no data)."""

    now: float
    verdict: str  # "passed" | "failed" | "inconclusive"
    detail: str = ""


@dataclass(frozen=True)
class Operator:
    """An operator's verb: pause, resume, promote, promote-full, abort, rollback."""

    now: float
    verb: str
    actor: str


Event = Tick | FleetAcked | Nacked | AnalysisDone | Operator

VERBS = frozenset({"pause", "resume", "promote", "promote-full", "abort", "rollback"})


@dataclass(frozen=True)
class Decision:
    """The new status (None: nothing changes) and why, for the audit log (`quiet`: a
    routine update, such as a passing check after a blue-green switch, is not audited)."""

    status: RolloutStatus | None
    reason: str = ""
    quiet: bool = False

    @property
    def changed(self) -> bool:
        return self.status is not None


NO_CHANGE = Decision(None)


def _to(status: RolloutStatus, now: float, reason: str, **changes: object) -> Decision:
    new = replace(status, since=now, reason=reason, **changes)  # type: ignore[arg-type]
    return Decision(new, reason)


def steps_of(spec: RolloutSpec) -> list[float]:
    """The weights a rollout goes through. mirror-then-canary starts with a 0% step
    (shadow traffic only); bluegreen previews `to` at 0%, then switches all at once."""
    if spec.strategy == "bluegreen":
        return [0.0, 100.0]
    if spec.strategy == "mirror-then-canary" and spec.steps[0] > 0:
        return [0.0, *spec.steps]
    return list(spec.steps)


def _step(spec: RolloutSpec, status: RolloutStatus, index: int, now: float, why: str) -> Decision:
    weight = steps_of(spec)[index]
    if weight >= 100:
        return _to(status, now, why, phase=Phase.PROMOTING, step=index, weight=100.0,
                   applied=False, failed_checks=0, message="")
    return _to(status, now, why, phase=Phase.PROGRESSING, step=index, weight=weight,
               applied=False, failed_checks=0, message="")


def _rollback(status: RolloutStatus, now: float, why: str, message: str = "") -> Decision:
    return _to(status, now, why, phase=Phase.ROLLING_BACK, weight=0.0, applied=False,
               message=message or status.message)


def transition(spec: RolloutSpec, status: RolloutStatus, event: Event) -> Decision:
    """The next status of a rollout given one event. Pure and total: unknown or
    untimely events give NO_CHANGE, so repeating an operator verb changes nothing."""
    if isinstance(event, Operator):
        return _operator(spec, status, event)
    phase = status.phase
    if phase == Phase.SUCCEEDED and status.from_retained:
        return _retained(spec, status, event)
    if phase in FINAL_PHASES:
        return NO_CHANGE
    if isinstance(event, Nacked):
        if status.applied or phase not in (Phase.PROGRESSING, Phase.PROMOTING):
            return NO_CHANGE
        if spec.on_nack == "rollback":
            return _rollback(status, event.now, "config rejected by a proxy (NACK)", event.detail)
        # Halt at the last good step: the proxy keeps the config before this one.
        previous = steps_of(spec)[status.step - 1] if status.step > 0 else 0.0
        return _to(status, event.now, "config rejected by a proxy (NACK)",
                   phase=Phase.PAUSED, weight=previous, applied=False,
                   step=max(status.step - 1, -1), message=event.detail)
    if isinstance(event, FleetAcked):
        if status.applied:
            return NO_CHANGE
        if phase == Phase.PROMOTING:
            # A rolling update's route moves from `from`'s cluster to `to`'s only now:
            # that config must be ACKed too before `from` can be retired.
            return _to(status, event.now, "fleet ACKed 100% on the new version",
                       phase=Phase.SUCCEEDED, applied=spec.strategy != "rolling",
                       finished_at=event.now, failed_checks=0, from_retained=True)
        if phase == Phase.ROLLING_BACK:
            return _to(status, event.now, "fleet ACKed 100% on the old version",
                       phase=Phase.ROLLED_BACK, applied=True, finished_at=event.now)
        if phase in (Phase.PROGRESSING, Phase.PAUSED):
            return Decision(replace(status, applied=True, since=event.now), "fleet ACKed the step")
        return NO_CHANGE
    if isinstance(event, AnalysisDone):
        return _analysis(spec, status, event)
    if isinstance(event, Tick):
        if phase == Phase.PENDING:
            return _step(spec, status, 0, event.now, "rollout started")
        waited = event.now - status.since
        if phase in (Phase.PROGRESSING, Phase.PROMOTING) and not status.applied and (
            waited >= spec.ack_timeout.seconds
        ):
            if event.waiting:
                return _to(status, event.now, f"weight {status.weight:g}% not in force within "
                           f"{spec.ack_timeout}: {event.waiting}", phase=Phase.PAUSED,
                           message=event.waiting)
            return _to(status, event.now, f"the fleet did not ACK weight {status.weight:g}% "
                       f"within {spec.ack_timeout}", phase=Phase.PAUSED)
        if phase == Phase.PROGRESSING and status.applied and spec.analysis is None:
            if event.now - status.since >= spec.step_interval.seconds:
                return _step(spec, status, status.step + 1, event.now, "step interval elapsed")
    return NO_CHANGE


def _retained(spec: RolloutSpec, status: RolloutStatus, event: Event) -> Decision:
    """Succeeded, `from` still configured: the rollback window runs. A blue-green switch
    stays under analysis until it ends; a failure switches back."""
    finished = status.finished_at if status.finished_at is not None else status.since
    if isinstance(event, FleetAcked) and not status.applied:
        return Decision(replace(status, applied=True), "fleet ACKed the switch", quiet=True)
    window = spec.rollback_window.seconds
    if isinstance(event, Tick) and status.applied and event.now - finished >= window:
        # Retired only once traffic has left it everywhere: its cluster then goes.
        return _to(status, event.now, f"rollback window ({spec.rollback_window}) ended: "
                   f"{spec.from_} retired", from_retained=False)
    if not isinstance(event, AnalysisDone) or not post_switch_analysis(spec, status):
        return NO_CHANGE
    if event.now - status.since < spec.step_interval.seconds:
        return NO_CHANGE
    assert spec.analysis is not None
    if event.verdict == "failed":
        failed = status.failed_checks + 1
        if failed >= spec.analysis.failure_limit:
            return _to(status, event.now, f"analysis failed {failed} time(s) in a row after "
                       f"the switch: {event.detail}", phase=Phase.ROLLING_BACK, weight=0.0,
                       applied=False, from_retained=False, finished_at=None,
                       message=event.detail)
        return Decision(replace(status, failed_checks=failed, since=event.now,
                                message=event.detail),
                        f"analysis failed after the switch: {event.detail}")
    # Passed or inconclusive: the switch stands; no audit entry for every check.
    return Decision(replace(status, failed_checks=0, since=event.now, message=""),
                    f"analysis {event.verdict} after the switch: {event.detail}", quiet=True)


def post_switch_analysis(spec: RolloutSpec, status: RolloutStatus) -> bool:
    """A blue-green rollout with `analysis` is checked after its switch, in the window."""
    return (spec.strategy == "bluegreen" and spec.analysis is not None
            and status.phase == Phase.SUCCEEDED and status.from_retained)


def _analysis(spec: RolloutSpec, status: RolloutStatus, event: AnalysisDone) -> Decision:
    if status.phase != Phase.PROGRESSING or not status.applied or spec.analysis is None:
        return NO_CHANGE
    if event.now - status.since < spec.step_interval.seconds:
        return NO_CHANGE
    analysis = spec.analysis
    if event.verdict == "passed":
        return _step(spec, status, status.step + 1, event.now, f"analysis passed: {event.detail}")
    if event.verdict == "failed":
        failed = status.failed_checks + 1
        if failed >= analysis.failure_limit:
            return _rollback(status, event.now,
                             f"analysis failed {failed} time(s) in a row: {event.detail}",
                             event.detail)
        return Decision(replace(status, failed_checks=failed, since=event.now,
                                message=event.detail), f"analysis failed: {event.detail}")
    # Inconclusive (no data, provider error) is never a failure by itself.
    if analysis.inconclusive == "continue":
        return _step(spec, status, status.step + 1, event.now,
                     f"analysis inconclusive, continuing: {event.detail}")
    if analysis.inconclusive == "rollback":
        return _rollback(status, event.now, f"analysis inconclusive: {event.detail}")
    return _to(status, event.now, f"analysis inconclusive: {event.detail}",
               phase=Phase.PAUSED, message=event.detail)


def _operator(spec: RolloutSpec, status: RolloutStatus, event: Operator) -> Decision:
    phase, now, by = status.phase, event.now, f"by {event.actor}"
    verb = event.verb
    if verb == "pause" and phase in (Phase.PENDING, Phase.PROGRESSING):
        return _to(status, now, f"paused {by}", phase=Phase.PAUSED)
    if verb == "resume" and phase == Phase.PAUSED:
        if status.step < 0:
            return _step(spec, status, 0, now, f"resumed {by}")
        return _to(status, now, f"resumed {by}", phase=Phase.PROGRESSING, message="",
                   failed_checks=0)
    if verb in ("promote", "promote-full") and phase in (
        Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED
    ):
        index = status.step + 1
        steps = steps_of(spec)
        if verb == "promote-full" or index >= len(steps):
            return _to(status, now, f"promoted to 100% {by}", phase=Phase.PROMOTING,
                       step=len(steps) - 1, weight=100.0, applied=False, message="")
        return _step(spec, status, index, now, f"promoted {by}")
    if verb == "abort" and phase in ACTIVE_PHASES and phase != Phase.ROLLING_BACK:
        return _to(status, now, f"aborted {by}", phase=Phase.ABORTED, weight=0.0,
                   applied=False, finished_at=now)
    if verb == "rollback" and status.active_changed_at is None:
        # Once an apply changed `active` after success, `active` is the user's again.
        window = spec.rollback_window.seconds
        in_window = (
            phase == Phase.SUCCEEDED and status.finished_at is not None
            and now - status.finished_at <= window
        )
        if (phase in ACTIVE_PHASES and phase != Phase.ROLLING_BACK) or in_window:
            return _to(status, now, f"rollback {by}", phase=Phase.ROLLING_BACK, weight=0.0,
                       applied=False, from_retained=False, finished_at=None)
    return NO_CHANGE
