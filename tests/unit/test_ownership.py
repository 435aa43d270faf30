"""One owner for an Upstream's `active` (controlplane.model.ownership): the pure rules
apply checks between the state before and the state after."""

from __future__ import annotations

import pytest

from controlplane.model import DesiredState, Resource, parse_yaml
from controlplane.model.ownership import (
    rollback_refusal,
    supersede,
    transition_problems,
    with_from,
)
from controlplane.model.status import Phase, RolloutStatus
from controlplane.rollout.machine import Operator, transition
from tests.support.states import PAYMENTS_EDGE

V2 = 'v2: {endpoints: ["127.0.0.1:9002"]}'
V3 = 'v3: {endpoints: ["127.0.0.1:9003"]}'
BASE = PAYMENTS_EDGE.replace(V2, f"{V2}, {V3}")
"""payments: versions v1 (active), v2, v3."""


def upstream(active: str = "v1", versions: str = f"{V2}, {V3}") -> Resource:
    text = PAYMENTS_EDGE.replace(V2, versions).replace("active: v1", f"active: {active}")
    return parse_yaml(text)[2]


def rollout(name: str = "r", to: str = "v2", from_: str | None = "v1") -> Resource:
    source = f"from: {from_}, " if from_ is not None else ""
    return parse_yaml(f"""
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: {name}}}
spec: {{upstream: payments, {source}to: {to}}}
""")[0]


def state(*extra: Resource, statuses: dict[str, RolloutStatus] | None = None,
          active: str = "v1") -> DesiredState:
    base = DesiredState.of(parse_yaml(BASE)).with_applied([upstream(active), *extra])
    for name, status in (statuses or {}).items():
        base = base.with_status(name, status)
    return base


def problems(before: DesiredState, *applied: Resource) -> list[str]:
    after = before.with_applied(with_from(before, applied))
    return [str(p) for p in transition_problems(before, after)]


NOT_ACTIVE = ("Rollout/r: spec.from: 'v2' is not Upstream/payments's active version 'v1'; "
              "a rollout moves traffic from the version that has it (omit from to mean active)")
RUNNING = [Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING,
           Phase.ROLLING_BACK]
FINISHED = [Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.ABORTED]


@pytest.mark.parametrize(("before", "applied", "want"), [
    pytest.param(state(), [rollout()], [], id="new-rollout-from-active"),
    pytest.param(state(), [rollout(from_=None)], [], id="new-rollout-from-omitted"),
    pytest.param(state(), [rollout(to="v3", from_="v2")],
                 [NOT_ACTIVE],
                 id="new-rollout-from-not-active"),
    pytest.param(state(), [upstream("v2"), rollout(to="v3", from_="v2")], [],
                 id="new-active-and-a-rollout-from-it-in-one-apply"),
    pytest.param(state(rollout(), statuses={"r": RolloutStatus(Phase.SUCCEEDED)}, active="v2"),
                 [rollout()], [], id="reapply-of-a-finished-rollout-unchanged"),
    pytest.param(state(rollout(), statuses={"r": RolloutStatus(Phase.SUCCEEDED)}, active="v2"),
                 [rollout(from_=None)], [], id="reapply-of-a-finished-rollout-from-omitted"),
    pytest.param(state(rollout(to="v3")), [rollout(to="v3", from_="v2")],
                 [NOT_ACTIVE],
                 id="existing-rollout-given-another-from"),
    *[pytest.param(state(rollout(), statuses={"r": RolloutStatus(phase)}),
                   [upstream("v3")],
                   [f"Upstream/payments: spec.active: Rollout/r is {phase} and owns the active "
                    "version until it finishes; `controlplane rollout abort r` (traffic back "
                    "to v1) or `controlplane rollout promote r` (on to v2) first"],
                   id=f"active-changed-while-{phase}") for phase in RUNNING],
    *[pytest.param(state(rollout(), statuses={"r": RolloutStatus(phase)}),
                   [upstream("v3")], [], id=f"active-changed-after-{phase}")
      for phase in FINISHED],
    pytest.param(state(rollout(), statuses={"r": RolloutStatus(Phase.PROGRESSING)}),
                 [upstream(versions=V3)],
                 ["Upstream/payments: spec.versions: ['v2'] are used by Rollout/r, which is "
                  "Progressing; `controlplane rollout abort r` (traffic back to v1) or "
                  "`controlplane rollout promote r` (on to v2) first"],
                 id="to-removed-while-progressing"),
    pytest.param(state(rollout(), statuses={"r": RolloutStatus(Phase.PROGRESSING)}),
                 [upstream(versions=V2)], [], id="an-unused-version-removed-while-progressing"),
    pytest.param(state(rollout(), statuses={"r": RolloutStatus(Phase.ABORTED)}),
                 [upstream(versions=V3)], [], id="to-removed-after-abort"),
])
def test_transition_rules(before: DesiredState, applied: list[Resource], want: list[str]
                          ) -> None:
    assert problems(before, *applied) == want


def test_an_omitted_from_is_filled_explicitly() -> None:
    filled = with_from(state(), [rollout(from_=None)])[0]
    assert filled.spec.from_ == "v1"  # type: ignore[union-attr]
    assert '"from":"v1"' in filled.model_dump_json(by_alias=True, exclude_unset=True)
    # The active this apply leaves, when the same apply changes it.
    assert with_from(state(), [upstream("v3"), rollout(from_=None)])[1].spec.from_ == "v3"  # type: ignore[union-attr]
    # An existing rollout keeps its own: re-applying the same file changes nothing.
    done = state(rollout(), statuses={"r": RolloutStatus(Phase.SUCCEEDED)}, active="v2")
    assert with_from(done, [rollout(from_=None)])[0] == rollout()


RETAINED = RolloutStatus(Phase.SUCCEEDED, 2, 100.0, applied=True, finished_at=1000.0,
                         from_retained=True)


@pytest.mark.parametrize(("status", "new_active", "now", "superseded"), [
    pytest.param(RETAINED, "v1", 1010.0, True, id="apply-back-to-from-in-the-window"),
    pytest.param(RETAINED, "v3", 1010.0, True, id="apply-of-another-version-in-the-window"),
    pytest.param(RETAINED, "v2", 1010.0, False, id="active-unchanged"),
    pytest.param(RolloutStatus(Phase.SUCCEEDED, 2, 100.0, finished_at=1000.0), "v1", 1010.0,
                 True, id="in-the-window-from-already-retired"),
    pytest.param(RolloutStatus(Phase.SUCCEEDED, 2, 100.0, finished_at=1000.0), "v1", 9000.0,
                 False, id="after-the-window"),
    pytest.param(RolloutStatus(Phase.ROLLED_BACK, finished_at=1000.0), "v3", 1010.0, False,
                 id="rolled-back"),
    pytest.param(RolloutStatus(Phase.ABORTED, finished_at=1000.0), "v3", 1010.0, False,
                 id="aborted"),
    pytest.param(RolloutStatus(Phase.SUCCEEDED, finished_at=1000.0, active_changed_at=1005.0,
                               active_changed_by="earlier"), "v3", 1010.0, False,
                 id="already-superseded"),
])
def test_supersede(status: RolloutStatus, new_active: str, now: float, superseded: bool
                   ) -> None:
    before = state(rollout(), statuses={"r": status}, active="v2")
    after = before.with_applied([upstream(new_active)])
    out = supersede(before, after, actor="admin:alice", now=now)
    assert ("r" in out) == superseded
    if superseded:
        new = out["r"]
        assert not new.from_retained and new.phase == Phase.SUCCEEDED
        assert (new.active_changed_at, new.active_changed_by) == (now, "admin:alice")


def test_a_superseded_rollout_refuses_its_rollback_and_says_why() -> None:
    marked = RolloutStatus(Phase.SUCCEEDED, 2, 100.0, finished_at=1000.0,
                           active_changed_at=1010.0, active_changed_by="admin:alice")
    done = state(rollout(), statuses={"r": marked}, active="v3")
    assert rollback_refusal(done, "r") == (
        "Rollout/r cannot roll back: Upstream/payments's active was changed by apply at "
        "1970-01-01T00:16:50Z by admin:alice; to go back, apply `active: v1` to "
        "Upstream/payments instead")
    assert rollback_refusal(state(rollout(), statuses={"r": RETAINED}, active="v2"), "r") is None
    spec = done.rollouts["r"].spec
    assert not transition(spec, marked, Operator(1020.0, "rollback", "op")).changed
    assert transition(spec, RETAINED, Operator(1020.0, "rollback", "op")).changed
