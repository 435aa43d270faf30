"""Rollout statuses → traffic policies: what translate is told about each upstream."""

from __future__ import annotations

from controlplane.model import DesiredState, parse_yaml
from controlplane.model.status import Phase, RolloutStatus
from controlplane.rollout.traffic import traffic_of
from tests.support.states import PAYMENTS_EDGE

V2 = 'v2: {endpoints: ["127.0.0.1:9002"]}'
V3 = PAYMENTS_EDGE.replace(V2, V2 + ', v3: {endpoints: ["127.0.0.1:9003"]}')


def _rollout(name: str, from_: str, to: str) -> str:
    return f"""---
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: {name}}}
spec: {{upstream: payments, from: {from_}, to: {to}}}
"""


def test_success_keeps_from_at_zero_until_retired_and_a_new_rollout_wins() -> None:
    # As the engine leaves it: Succeeded, and `active` set to `to` in the same write.
    on_v2 = V3.replace("active: v1", "active: v2")
    state = DesiredState.of(parse_yaml(on_v2 + _rollout("to-v2", "v1", "v2")))
    retained = RolloutStatus(Phase.SUCCEEDED, 2, 100.0, applied=True, from_retained=True)
    policy = traffic_of(state.with_status("to-v2", retained))["payments"]
    assert (policy.from_version, policy.to_version, policy.weight) == ("v1", "v2", 100.0)
    retired = RolloutStatus(Phase.SUCCEEDED, 2, 100.0, applied=True)
    assert traffic_of(state.with_status("to-v2", retired)) == {}

    both = DesiredState.of(parse_yaml(on_v2 + _rollout("to-v2", "v1", "v2")
                                      + _rollout("to-v3", "v2", "v3")))
    both = both.with_status("to-v2", retained).with_status(
        "to-v3", RolloutStatus(Phase.PROGRESSING, 0, 10.0))
    policy = traffic_of(both)["payments"]
    assert (policy.from_version, policy.to_version, policy.weight) == ("v2", "v3", 10.0)


def test_a_retained_from_gives_way_to_an_active_changed_since() -> None:
    """`active` changed after success (an apply, or a state from before apply refused it):
    the retained split is not in force any more, `active` is; deleting the rollout then
    moves nothing."""
    on_v3 = V3.replace("active: v1", "active: v3")
    state = DesiredState.of(parse_yaml(on_v3 + _rollout("to-v2", "v1", "v2")))
    retained = RolloutStatus(Phase.SUCCEEDED, 2, 100.0, applied=True, from_retained=True)
    assert traffic_of(state.with_status("to-v2", retained)) == {}


def test_rolling_back_a_finished_rollout_is_refused_while_another_runs() -> None:
    import pytest

    from controlplane.admin.rollouts import _refuse_second_owner
    from controlplane.errors import ConflictError
    from controlplane.rollout.machine import Operator, transition

    state = DesiredState.of(parse_yaml(V3 + _rollout("to-v2", "v1", "v2")
                                       + _rollout("to-v3", "v2", "v3")))
    done = RolloutStatus(Phase.SUCCEEDED, 2, 100.0, applied=True, finished_at=100.0,
                         from_retained=True)
    state = state.with_status("to-v2", done)
    decision = transition(state.rollouts["to-v2"].spec, done, Operator(200, "rollback", "op"))
    assert decision.status is not None and decision.status.phase == Phase.ROLLING_BACK
    aborted = state.with_status("to-v3", RolloutStatus(Phase.ABORTED, 0, 0.0))
    _refuse_second_owner(aborted, "to-v2", decision)  # to-v3 is over: allowed
    running = state.with_status("to-v3", RolloutStatus(Phase.PROGRESSING, 0, 10.0))
    with pytest.raises(ConflictError, match="Rollout/to-v3 now manages Upstream/payments"):
        _refuse_second_owner(running, "to-v2", decision)


def test_a_succeeded_rollouts_from_is_retired_once_its_window_ends() -> None:
    from controlplane.rollout.traffic import retired_of
    from controlplane.translate import translate

    state = DesiredState.of(parse_yaml(V3.replace("active: v1", "active: v2")
                                       + _rollout("to-v2", "v1", "v2")))
    in_window = RolloutStatus(Phase.SUCCEEDED, 2, 100.0, applied=True, from_retained=True)
    assert retired_of(state.with_status("to-v2", in_window)) == {}
    done = state.with_status("to-v2", RolloutStatus(Phase.SUCCEEDED, 2, 100.0, applied=True))
    assert retired_of(done) == {"payments": frozenset({"v1"})}
    clusters = [c.name for c in translate(done, group="edge", retired=retired_of(done)).clusters]
    assert clusters == ["payments|v2", "payments|v3"]
    # Back in use: the active version again, or a running rollout's.
    again = done.with_applied(parse_yaml(V3.replace("active: v1", "active: v1"))[2:3])
    assert retired_of(again) == {}
    rolling = DesiredState.of(parse_yaml(V3.replace("active: v1", "active: v2")
                                         + _rollout("to-v2", "v1", "v2")
                                         + _rollout("back", "v2", "v1")))
    rolling = rolling.with_status("to-v2", RolloutStatus(Phase.SUCCEEDED, 2, 100.0))
    assert retired_of(rolling) == {}  # `back` (Pending) uses v1
