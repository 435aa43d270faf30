"""`get upstream`'s `status.traffic`: the split per version read back from the translated
routes of every group that reaches the upstream (controlplane.admin.traffic)."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.admin.traffic import traffic_in_force
from controlplane.cli.resources import _traffic
from controlplane.model import DesiredState, parse_yaml
from controlplane.model.status import Phase, RolloutStatus
from tests.support.states import PAYMENTS_EDGE, with_rollout

SIDECAR = """---
apiVersion: controlplane/v1
kind: Listener
metadata: {name: mesh-http}
spec: {group: mesh, port: 15001}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: payments-mesh}
spec: {listener: mesh-http, upstream: payments}
"""


def state(text: str, status: RolloutStatus | None = None) -> DesiredState:
    s = DesiredState.of(parse_yaml(text))
    return s if status is None else s.with_status("payments-v2", status)


@pytest.mark.parametrize(("desired", "want"), [
    pytest.param(state(PAYMENTS_EDGE), [{"group": "edge", "weights": {"v1": 100}}],
                 id="no-rollout-all-on-active"),
    pytest.param(state(PAYMENTS_EDGE.replace("active: v1", "active: v2")),
                 [{"group": "edge", "weights": {"v2": 100}}], id="active-switched"),
    pytest.param(state(with_rollout(), RolloutStatus(Phase.PROGRESSING, 0, 10.0)),
                 [{"group": "edge", "weights": {"v1": 90, "v2": 10}}], id="canary-at-10"),
    pytest.param(state(with_rollout(), RolloutStatus(Phase.PROGRESSING, 0, 12.5)),
                 [{"group": "edge", "weights": {"v1": 87.5, "v2": 12.5}}], id="fractional"),
    pytest.param(state(with_rollout(), RolloutStatus(Phase.PENDING)),
                 [{"group": "edge", "weights": {"v1": 100, "v2": 0}}], id="pending-at-0"),
    pytest.param(state(with_rollout(), RolloutStatus(Phase.ABORTED)),
                 [{"group": "edge", "weights": {"v1": 100}}], id="aborted"),
    pytest.param(state(PAYMENTS_EDGE + SIDECAR),
                 [{"group": "edge", "weights": {"v1": 100}},
                  {"group": "mesh", "weights": {"v1": 100}}], id="two-groups"),
])
def test_traffic_in_force(desired: DesiredState, want: list[dict[str, Any]]) -> None:
    assert traffic_in_force(desired)["payments"] == want


def test_a_rolling_update_is_shown_by_the_endpoints_of_its_one_cluster() -> None:
    two_each = with_rollout(steps="[50, 100]").replace(
        'v1: {endpoints: ["127.0.0.1:9001"]}, v2: {endpoints: ["127.0.0.1:9002"]}',
        'v1: {endpoints: ["127.0.0.1:9001", "127.0.0.1:9011"]}, '
        'v2: {endpoints: ["127.0.0.1:9002", "127.0.0.1:9012"]}').replace(
        "to: v2,", "to: v2, strategy: rolling,")
    assert "strategy: rolling" in two_each and "9012" in two_each
    desired = state(two_each, RolloutStatus(Phase.PROGRESSING, 0, 50.0))
    assert traffic_in_force(desired)["payments"] == [
        {"group": "edge", "weights": {"v1": 50, "v2": 50}}]


def test_an_ab_match_route_is_not_a_share_of_the_traffic() -> None:
    text = with_rollout().replace("stepInterval: 10s}", "stepInterval: 10s, match: {headers: "
                                  "{x-canary: \"true\"}}}")
    assert "x-canary" in text
    desired = state(text, RolloutStatus(Phase.PROGRESSING, 0, 0.0))
    assert traffic_in_force(desired)["payments"] == [
        {"group": "edge", "weights": {"v1": 100, "v2": 0}}]


def test_a_group_that_does_not_translate_says_so() -> None:
    text = PAYMENTS_EDGE + SIDECAR.replace("port: 15001", "port: 15001, tls: {certificate: "
                                           "file}")
    entries = traffic_in_force(DesiredState.of(parse_yaml(text)))["payments"]
    assert entries[0] == {"group": "edge", "weights": {"v1": 100}}
    assert entries[1]["group"] == "mesh" and "cannot translate" in entries[1]["error"]


@pytest.mark.parametrize(("entries", "cell"), [
    pytest.param([], "-", id="no-route"),
    pytest.param([{"group": "edge", "weights": {"v1": 90, "v2": 10}}], "v1=90%,v2=10%",
                 id="one-group"),
    pytest.param([{"group": "edge", "weights": {"v1": 100}},
                  {"group": "mesh", "weights": {"v1": 100}}], "v1=100%", id="groups-agree"),
    pytest.param([{"group": "edge", "weights": {"v1": 100}},
                  {"group": "mesh", "error": "cannot translate"}],
                 "edge:v1=100% mesh:error", id="groups-differ"),
])
def test_the_table_cell(entries: list[dict[str, Any]], cell: str) -> None:
    assert _traffic({"status": {"traffic": entries}}) == cell
