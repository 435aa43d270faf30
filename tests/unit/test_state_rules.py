"""Cross-resource rules of `DesiredState.problems()` that stand for Envoy's (or the
translator's) rules: what they reject, apply rejects, so it never reaches a proxy or
freezes a group at its last good snapshot."""

from __future__ import annotations

import pytest

from controlplane.model import DesiredState, parse_yaml
from controlplane.translate import translate
from tests.support.states import PAYMENTS_EDGE, with_rollout


def problems(text: str) -> list[str]:
    return [str(p) for p in DesiredState.of(parse_yaml(text)).problems()]


def test_the_base_state_has_no_problem() -> None:
    assert problems(PAYMENTS_EDGE) == []
    assert problems(with_rollout()) == []


@pytest.mark.parametrize(("address", "conflict"), [
    ("0.0.0.0", True),  # the same address and port twice: Envoy NACKs the duplicate
    ("127.0.0.1", False),  # a specific address next to the wildcard: Envoy binds both
])
def test_listener_address_and_port_conflict_within_a_group(address: str, conflict: bool
                                                           ) -> None:
    text = PAYMENTS_EDGE + f"""---
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: second}}
spec: {{group: edge, port: 10000, address: {address}}}
"""
    found = problems(text)
    assert bool(found) == conflict, found
    if conflict:
        assert "Listener/second: spec.port" in found[0] and "edge-http" in found[0]
    other_group = text.replace("{group: edge, port: 10000, address", "{group: b, port: 10000, "
                               "address")
    assert problems(other_group) == []  # another group is another Envoy


@pytest.mark.parametrize(("hosts", "ok"), [
    ('["api.example.com", "*.example.com", "*"]', True),
    ('["a*b"]', True),  # Envoy takes it as an exact domain
    ('["bad host"]', False),
    ('[""]', False),
    ('["caf\u00e9.example"]', False),
])
def test_route_hosts_must_be_host_names(hosts: str, ok: bool) -> None:
    text = PAYMENTS_EDGE.replace("spec: {listener: edge-http, upstream: payments}",
                                 f"spec: {{listener: edge-http, upstream: payments, "
                                 f"hosts: {hosts}}}")
    found = problems(text)
    assert (found == []) == ok, found
    if not ok:
        assert "Route/payments: spec.hosts" in found[0] and "not host names" in found[0]
    # What the rule accepts translates; what it rejects would not.
    state = DesiredState.of(parse_yaml(text))
    if ok:
        translate(state, group="edge")
    else:
        with pytest.raises(Exception, match=r"spec\.hosts"):
            translate(state, group="edge")


def test_listener_tls_certificate_other_than_auto() -> None:
    text = PAYMENTS_EDGE.replace("spec: {group: edge, port: 10000}",
                                 "spec: {group: edge, port: 10000, tls: {certificate: mine}}")
    (found,) = problems(text)
    assert "Listener/edge-http: spec.tls.certificate" in found and "'auto'" in found


@pytest.mark.parametrize(("match", "where"), [
    ('{headers: {"x canary": "true"}}', "spec.match.headers"),
    ('{headers: {"": "true"}}', "spec.match.headers"),
    ('{headers: {x-canary: "a\\nb"}}', "spec.match.headers.x-canary"),
    ("{cookie: canary}", "spec.match.cookie"),
    ('{cookie: "canary="}', "spec.match.cookie"),
    ('{cookie: "=1"}', "spec.match.cookie"),
])
def test_rollout_match_envoy_can_build(match: str, where: str) -> None:
    text = with_rollout().replace("stepInterval: 10s}", f"stepInterval: 10s, match: {match}}}")
    (found,) = problems(text)
    assert f"Rollout/payments-v2: {where}" in found, found


def test_rollout_match_that_is_fine() -> None:
    text = with_rollout().replace(
        "stepInterval: 10s}",
        'stepInterval: 10s, match: {headers: {x-canary: "true"}, cookie: "canary=1"}}')
    assert problems(text) == []
