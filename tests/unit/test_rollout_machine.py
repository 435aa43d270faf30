"""The rollout state machine, table-tested: (status, event) → expected phase, step, weight."""

from __future__ import annotations

import pytest

from controlplane.model.duration import Duration
from controlplane.model.resources import Analysis, RolloutSpec
from controlplane.rollout.machine import (
    AnalysisDone,
    Event,
    FleetAcked,
    Nacked,
    Operator,
    Phase,
    RolloutStatus,
    Tick,
    transition,
)

SPEC = RolloutSpec.model_validate(
    {"upstream": "p", "from": "v1", "to": "v2", "steps": [10, 50, 100], "stepInterval": "30s",
     "rollbackWindow": "1h"}
)
ANALYZED = SPEC.model_copy(update={"analysis": Analysis(failure_limit=2)})
PAUSE_ON_NO_DATA = ANALYZED
CONTINUE_ON_NO_DATA = SPEC.model_copy(update={"analysis": Analysis(inconclusive="continue")})

S = RolloutStatus
P = Phase


def at(phase: Phase, step: int = -1, weight: float = 0.0, *, applied: bool = False,
       since: float = 0.0, failed: int = 0, finished: float | None = None) -> RolloutStatus:
    return S(phase=phase, step=step, weight=weight, applied=applied, since=since,
             failed_checks=failed, finished_at=finished)


CASES = [
    pytest.param(SPEC, at(P.PENDING), Tick(1), (P.PROGRESSING, 0, 10), id="start"),
    pytest.param(SPEC, at(P.PROGRESSING, 0, 10), Tick(59), None, id="no-step-before-ack"),
    pytest.param(SPEC, at(P.PROGRESSING, 0, 10), Tick(60), (P.PAUSED, 0, 10),
                 id="ack-timeout-pauses"),
    pytest.param(SPEC, at(P.PROGRESSING, 0, 10, applied=True, since=0), Tick(29), None,
                 id="interval-not-elapsed"),
    pytest.param(SPEC, at(P.PROGRESSING, 0, 10, applied=True, since=0), Tick(30),
                 (P.PROGRESSING, 1, 50), id="next-step"),
    pytest.param(SPEC, at(P.PROGRESSING, 1, 50, applied=True), Tick(30),
                 (P.PROMOTING, 2, 100), id="last-step-promotes"),
    pytest.param(SPEC, at(P.PROMOTING, 2, 100), FleetAcked(5), (P.SUCCEEDED, 2, 100),
                 id="promoted-when-acked"),
    pytest.param(SPEC, at(P.PROGRESSING, 1, 50), Nacked(3, "bad cluster"),
                 (P.PAUSED, 0, 10), id="nack-halts-at-last-good-step"),
    pytest.param(SPEC, at(P.PROGRESSING, 0, 10), Nacked(3, "bad"), (P.PAUSED, -1, 0),
                 id="nack-on-first-step"),
    pytest.param(SPEC, at(P.PROGRESSING, 1, 50, applied=True), Nacked(3, "late"), None,
                 id="nack-after-ack-ignored"),
    pytest.param(SPEC.model_copy(update={"on_nack": "rollback"}), at(P.PROGRESSING, 1, 50),
                 Nacked(3, "bad"), (P.ROLLING_BACK, 1, 0), id="nack-rolls-back-if-asked"),
    pytest.param(SPEC, at(P.PROGRESSING, 1, 50), Operator(1, "pause", "op"),
                 (P.PAUSED, 1, 50), id="pause"),
    pytest.param(SPEC, at(P.PAUSED, 1, 50), Operator(1, "pause", "op"), None,
                 id="pause-idempotent"),
    pytest.param(SPEC, at(P.PAUSED, 1, 50), Operator(1, "resume", "op"),
                 (P.PROGRESSING, 1, 50), id="resume"),
    pytest.param(SPEC, at(P.PROGRESSING, 0, 10), Operator(1, "promote", "op"),
                 (P.PROGRESSING, 1, 50), id="promote-one-step"),
    pytest.param(SPEC, at(P.PROGRESSING, 0, 10), Operator(1, "promote-full", "op"),
                 (P.PROMOTING, 2, 100), id="promote-full"),
    pytest.param(SPEC, at(P.PROGRESSING, 1, 50), Operator(1, "abort", "op"),
                 (P.ABORTED, 1, 0), id="abort-returns-traffic"),
    pytest.param(SPEC, at(P.ABORTED, 1, 0), Operator(1, "abort", "op"), None,
                 id="abort-idempotent"),
    pytest.param(SPEC, at(P.PROGRESSING, 1, 50), Operator(1, "rollback", "op"),
                 (P.ROLLING_BACK, 1, 0), id="rollback"),
    pytest.param(SPEC, at(P.ROLLING_BACK, 1, 0), FleetAcked(2), (P.ROLLED_BACK, 1, 0),
                 id="rolled-back-when-acked"),
    pytest.param(SPEC, at(P.SUCCEEDED, 2, 100, finished=100), Operator(200, "rollback", "op"),
                 (P.ROLLING_BACK, 2, 0), id="rollback-within-window"),
    pytest.param(SPEC, at(P.SUCCEEDED, 2, 100, finished=100),
                 Operator(100 + 3601, "rollback", "op"), None, id="rollback-after-window"),
    pytest.param(SPEC, at(P.SUCCEEDED, 2, 100), Tick(10**6), None, id="final-is-final"),
    pytest.param(ANALYZED, at(P.PROGRESSING, 0, 10, applied=True), Tick(100), None,
                 id="analysis-gates-steps"),
    pytest.param(ANALYZED, at(P.PROGRESSING, 0, 10, applied=True),
                 AnalysisDone(30, "passed", "ok"), (P.PROGRESSING, 1, 50), id="analysis-pass"),
    pytest.param(ANALYZED, at(P.PROGRESSING, 0, 10, applied=True),
                 AnalysisDone(30, "failed", "5xx"), (P.PROGRESSING, 0, 10), id="first-failure"),
    pytest.param(ANALYZED, at(P.PROGRESSING, 0, 10, applied=True, failed=1),
                 AnalysisDone(30, "failed", "5xx"), (P.ROLLING_BACK, 0, 0),
                 id="failure-limit-rolls-back"),
    pytest.param(PAUSE_ON_NO_DATA, at(P.PROGRESSING, 0, 10, applied=True),
                 AnalysisDone(30, "inconclusive", "no requests"), (P.PAUSED, 0, 10),
                 id="inconclusive-pauses"),
    pytest.param(CONTINUE_ON_NO_DATA, at(P.PROGRESSING, 0, 10, applied=True),
                 AnalysisDone(30, "inconclusive", "no requests"), (P.PROGRESSING, 1, 50),
                 id="inconclusive-continues"),
]


@pytest.mark.parametrize(("spec", "status", "event", "expected"), CASES)
def test_transition(spec: RolloutSpec, status: RolloutStatus, event: Event,
                    expected: tuple[Phase, int, float] | None) -> None:
    decision = transition(spec, status, event)
    if expected is None:
        assert not decision.changed, decision
        return
    assert decision.status is not None
    got = (decision.status.phase, decision.status.step, decision.status.weight)
    assert got == expected, decision.reason
    assert decision.reason


def test_failure_count_resets_on_a_new_step() -> None:
    status = at(P.PROGRESSING, 0, 10, applied=True, failed=1)
    decision = transition(ANALYZED, status, AnalysisDone(30, "passed"))
    assert decision.status is not None and decision.status.failed_checks == 0


def test_nack_message_is_kept() -> None:
    decision = transition(SPEC, at(P.PROGRESSING, 1, 50), Nacked(3, "unknown field 'x'"))
    assert decision.status is not None and "unknown field" in decision.status.message


BLUEGREEN = ANALYZED.model_copy(update={"strategy": "bluegreen",
                                       "rollback_window": Duration("10m")})


def _retained(spec: RolloutSpec = SPEC, *, failed: int = 0) -> RolloutStatus:
    return S(phase=P.SUCCEEDED, step=2, weight=100.0, applied=True, since=100.0,
             finished_at=100.0, failed_checks=failed, from_retained=True)


def test_success_keeps_from_until_the_rollback_window_ends() -> None:
    done = transition(SPEC, at(P.PROMOTING, 2, 100), FleetAcked(100)).status
    assert done is not None and done.phase == P.SUCCEEDED and done.from_retained
    assert not transition(SPEC, _retained(), Tick(100 + 3599)).changed
    retired = transition(SPEC, _retained(), Tick(100 + 3600))
    assert retired.status is not None and not retired.status.from_retained
    assert retired.status.phase == P.SUCCEEDED and "v1 retired" in retired.reason
    rolling = SPEC.model_copy(update={"strategy": "rolling"})
    done = transition(rolling, at(P.PROMOTING, 2, 100), FleetAcked(100)).status
    # A rolling update's route moves to `to`'s cluster only now: ACK that, then retire.
    assert done is not None and done.from_retained and not done.applied
    assert not transition(rolling, done, Tick(100 + 7200)).changed
    acked = transition(rolling, done, FleetAcked(101))
    assert acked.quiet and acked.status is not None and acked.status.applied
    assert transition(rolling, acked.status, Tick(100 + 3600)).status.from_retained is False  # type: ignore[union-attr]


def test_bluegreen_is_checked_after_the_switch_and_switches_back_on_failures() -> None:
    early = transition(BLUEGREEN, _retained(BLUEGREEN), AnalysisDone(110, "failed", "5xx"))
    assert not early.changed  # a check counts once per step interval
    first = transition(BLUEGREEN, _retained(BLUEGREEN), AnalysisDone(130, "failed", "5xx"))
    assert first.status is not None and first.status.failed_checks == 1
    assert first.status.phase == P.SUCCEEDED and not first.quiet
    back = transition(BLUEGREEN, _retained(BLUEGREEN, failed=1),
                      AnalysisDone(130, "failed", "5xx"))
    assert back.status is not None and back.status.phase == P.ROLLING_BACK
    assert back.status.weight == 0 and not back.status.from_retained
    passed = transition(BLUEGREEN, _retained(BLUEGREEN, failed=1), AnalysisDone(130, "passed"))
    assert passed.quiet and passed.status is not None and passed.status.failed_checks == 0
    canary = transition(ANALYZED, _retained(ANALYZED), AnalysisDone(130, "failed", "5xx"))
    assert not canary.changed  # only a blue-green switch is judged after it


def test_waiting_for_health_names_itself_when_it_times_out() -> None:
    decision = transition(SPEC, at(P.PROGRESSING, 0, 10), Tick(60, "2/3 endpoints healthy"))
    assert decision.status is not None and decision.status.phase == P.PAUSED
    assert "2/3 endpoints healthy" in decision.reason
