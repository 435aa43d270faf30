"""translate: pure, deterministic, and loud about anything Envoy would accept but get wrong."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import MappingProxyType

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.route.v3.route_components_pb2 import Route as RouteProto
from envoy.config.route.v3.route_components_pb2 import RouteAction, VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf.duration_pb2 import Duration

from controlplane.errors import TranslationError
from controlplane.model import DesiredState, parse_yaml
from controlplane.model.traffic import TrafficPolicy
from controlplane.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    ResourceSet,
    cluster_name,
    dangling_clusters,
    parse_cluster_name,
    translate,
)
from controlplane.translate.common import duration
from controlplane.translate.route import TOTAL_WEIGHT, cookie_matcher, split_weights

STATE_YAML = """
apiVersion: controlplane/v1
kind: Listener
metadata: {name: edge-http}
spec: {group: edge, port: 10000}
---
apiVersion: controlplane/v1
kind: Listener
metadata: {name: mesh-out}
spec: {group: mesh, port: 15001}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: payments}
spec: {listener: edge-http, hosts: [a.example.com, b.example.com], prefix: /pay, upstream: payments}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: home}
spec: {listener: edge-http, upstream: home}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: orders}
spec: {listener: mesh-out, upstream: orders}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec:
  active: v1
  versions:
    v1: {endpoints: ["127.0.0.1:9001"]}
    v2: {endpoints: ["127.0.0.1:9002", "[::1]:9002"]}
  healthCheck: {path: /healthz}
  outlierDetection: {}
  circuitBreakers: {}
  retries: {attempts: 2}
  rateLimit: {requestsPerSecond: 5}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: home}
spec:
  active: v1
  versions:
    v1: {endpoints: ["127.0.0.1:9101"]}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: orders}
spec:
  active: v1
  versions:
    v1: {endpoints: ["127.0.0.1:9201"]}
"""


def state() -> DesiredState:
    resources = parse_yaml(STATE_YAML)
    result = DesiredState.of(resources)
    result.check()
    return result


def policy(**fields: object) -> dict[str, TrafficPolicy]:
    base: dict[str, object] = {
        "upstream": "payments", "from_version": "v1", "to_version": "v2", "weight": 10.0,
        "match_headers": MappingProxyType({"x-canary": "true", "x-b": "1"}),
        "match_cookie": "canary=1", "mirror_percent": 50.0,
    }
    base.update(fields)
    return {str(base["upstream"]): TrafficPolicy(**base)}  # type: ignore[arg-type]


def serialized(resources: ResourceSet) -> list[bytes]:
    return [
        m.SerializeToString(deterministic=True)
        for messages in resources.by_type_url().values()
        for m in messages
    ]


# ---- determinism ----------------------------------------------------------------------------


def test_translate_twice_gives_identical_bytes() -> None:
    first = translate(state(), group="edge", traffic=policy())
    second = translate(state(), group="edge", traffic=policy())
    assert serialized(first) == serialized(second)
    assert first == second


_DIGEST_SCRIPT = """
import hashlib, sys
from controlplane.model import DesiredState, parse_yaml
from controlplane.translate import translate
state = DesiredState.of(parse_yaml(sys.stdin.read()))
digest = hashlib.sha256()
for group in state.groups():
    for messages in translate(state, group=group).by_type_url().values():
        for message in messages:
            digest.update(message.SerializeToString(deterministic=True))
print(digest.hexdigest())
"""


def test_same_bytes_across_processes_and_hash_seeds() -> None:
    """Replicas and restarts must compute the same versions: no set or hash order leaks."""
    digests = {
        subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT], input=STATE_YAML, capture_output=True,
            text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1, digests


def test_input_order_does_not_change_output() -> None:
    resources = parse_yaml(STATE_YAML)
    reordered = DesiredState.of(reversed(resources))
    headers_reordered = policy(match_headers=MappingProxyType({"x-b": "1", "x-canary": "true"}))
    assert serialized(translate(reordered, group="edge", traffic=headers_reordered)) == (
        serialized(translate(state(), group="edge", traffic=policy()))
    )


def test_resources_are_sorted_by_name() -> None:
    resources = translate(state(), group="edge")
    names = [c.name for c in resources.clusters]
    assert names == sorted(names) == ["home|v1", "payments|v1", "payments|v2"]
    assert [e.cluster_name for e in resources.endpoints] == names
    unsorted = ResourceSet.of(clusters=[Cluster(name="b"), Cluster(name="a")])
    assert [c.name for c in unsorted.clusters] == ["a", "b"]


# ---- what each group gets -------------------------------------------------------------------


def test_each_group_gets_only_its_listeners_and_clusters() -> None:
    mesh = translate(state(), group="mesh")
    assert [lst.name for lst in mesh.listeners] == ["mesh-out"]
    assert [r.name for r in mesh.routes] == ["mesh-out"]
    assert [c.name for c in mesh.clusters] == ["orders|v1"]


def test_unknown_group_is_empty() -> None:
    resources = translate(state(), group="nobody")
    assert resources.is_empty()
    assert resources.by_type_url() == {
        CLUSTER_TYPE: [], ENDPOINT_TYPE: [], LISTENER_TYPE: [], ROUTE_TYPE: [], SECRET_TYPE: [],
    }


def test_by_type_url_keys_are_the_v3_type_urls() -> None:
    by_type = translate(state(), group="edge").by_type_url()
    for type_url, messages in by_type.items():
        for message in messages:
            assert type_url == f"type.googleapis.com/{message.DESCRIPTOR.full_name}"
    assert SECRET_TYPE.endswith("envoy.extensions.transport_sockets.tls.v3.Secret")


def test_route_without_policy_goes_to_active_version() -> None:
    (config,) = translate(state(), group="mesh").routes
    (route,) = config.virtual_hosts[0].routes
    assert route.route.cluster == "orders|v1"


def test_overlapping_hosts_never_repeat_a_domain() -> None:
    resources = translate(state(), group="edge")
    domains = [d for v in resources.routes[0].virtual_hosts for d in v.domains]
    assert sorted(domains) == ["*", "a.example.com", "b.example.com"]


# ---- rollout traffic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "to_weight"),
    [
        pytest.param(0, 0, id="zero"),
        pytest.param(1, 100, id="one"),
        pytest.param(33.33, 3333, id="hundredths"),
        pytest.param(99.999, 10000, id="rounds"),
        pytest.param(100, 10000, id="all"),
    ],
)
def test_split_weights_sum_to_total(percent: float, to_weight: int) -> None:
    assert split_weights(percent) == to_weight
    resources = translate(state(), group="edge", traffic=policy(weight=percent))
    split = [r for v in resources.routes[0].virtual_hosts for r in v.routes
             if r.route.HasField("weighted_clusters")]
    assert split, "no weighted route"
    for route in split:
        weights = [w.weight.value for w in route.route.weighted_clusters.clusters]
        assert weights == [TOTAL_WEIGHT - to_weight, to_weight]


def test_match_routes_come_before_the_split() -> None:
    resources = translate(state(), group="edge", traffic=policy())
    vhost = next(v for v in resources.routes[0].virtual_hosts if "a.example.com" in v.domains)
    assert [r.name for r in vhost.routes] == [
        "payments/match-headers", "payments/match-cookie", "payments",
    ]
    headers, cookie, split = vhost.routes
    assert [h.name for h in headers.match.headers] == ["x-b", "x-canary"]
    assert headers.route.cluster == cookie.route.cluster == "payments|v2"
    assert [m.cluster for m in split.route.request_mirror_policies] == ["payments|v2"]
    assert not headers.route.request_mirror_policies


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        pytest.param("canary=1", True, id="alone"),
        pytest.param("a=b; canary=1", True, id="last"),
        pytest.param("canary=1; a=b", True, id="first"),
        pytest.param("canary=10", False, id="longer-value"),
        pytest.param("xcanary=1", False, id="longer-name"),
    ],
)
def test_cookie_regex_matches_only_that_cookie(header: str, matches: bool) -> None:
    regex = cookie_matcher("canary=1").string_match.safe_regex.regex
    # Envoy's RE2 full-matches the header value; these constructs mean the same in Python.
    assert (re.fullmatch(regex, header) is not None) is matches


# ---- errors -----------------------------------------------------------------------------------


def test_policy_to_unknown_version_is_a_dangling_cluster() -> None:
    with pytest.raises(TranslationError, match=r"payments\|v9"):
        translate(state(), group="edge", traffic=policy(to_version="v9"))


def test_route_to_missing_upstream_bypassing_check() -> None:
    resources = [r for r in parse_yaml(STATE_YAML) if r.name != "orders" or r.kind != "Upstream"]
    broken = DesiredState.of(resources)  # no check(): translate must not trust it
    with pytest.raises(TranslationError, match="no Upstream named 'orders'"):
        translate(broken, group="mesh")
    translate(broken, group="edge")  # the other group does not use it


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(TranslationError) as caught:
        translate(state(), group="edge", traffic=policy(to_version="v9", weight=150.0))
    message = str(caught.value)
    assert "weight 150.0" in message
    assert "payments|v9" in message


def test_dangling_clusters_lists_each_missing_cluster() -> None:
    config = RouteConfiguration(name="edge-http", virtual_hosts=[VirtualHost(
        name="*", domains=["*"],
        routes=[RouteProto(name="r", route=RouteAction(cluster="payments|v1"))],
    )])
    resources = ResourceSet.of(routes=[config])
    assert dangling_clusters(resources) == [
        "RouteConfiguration/edge-http: route 'r' names cluster 'payments|v1', "
        "which the group does not get"
    ]
    assert dangling_clusters(ResourceSet.of(routes=[config], clusters=[
        Cluster(name="payments|v1")
    ])) == []


def test_two_listeners_on_one_address() -> None:
    text = STATE_YAML + """
---
apiVersion: controlplane/v1
kind: Listener
metadata: {name: edge-dup}
spec: {group: edge, port: 10000}
"""
    with pytest.raises(TranslationError, match=r"0\.0\.0\.0:10000 is already used"):
        translate(DesiredState.of(parse_yaml(text)), group="edge")


# ---- names and durations ----------------------------------------------------------------------


def test_cluster_names_round_trip() -> None:
    assert cluster_name("payments", "v2") == "payments|v2"
    assert parse_cluster_name(cluster_name("payments", "v2")) == ("payments", "v2")


@pytest.mark.parametrize("name", ["payments", "payments|", "|v1", "a|b|c", "Pay|v1", "a.b|v1"])
def test_parse_cluster_name_rejects(name: str) -> None:
    with pytest.raises(TranslationError):
        parse_cluster_name(name)


@pytest.mark.parametrize(
    ("text", "seconds", "nanos"),
    [
        pytest.param("250ms", 0, 250_000_000, id="ms"),
        pytest.param("1m30s", 90, 0, id="compound"),
        pytest.param("1.5s", 1, 500_000_000, id="fraction"),
        pytest.param("0.0004s", 0, 0, id="below-ms"),
        pytest.param("1h", 3600, 0, id="hour"),
    ],
)
def test_duration_is_exact_to_the_millisecond(text: str, seconds: int, nanos: int) -> None:
    assert duration(text) == Duration(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize(
    ("percent", "expected"),
    [
        pytest.param(0, ["a1", "a2"], id="none-yet"),
        pytest.param(10, ["a1", "a2", "b1"], id="surge-first"),
        pytest.param(50, ["a1", "b1"], id="half"),
        pytest.param(100, ["b1", "b2"], id="all-new"),
    ],
)
def test_rolling_endpoints_bring_new_ones_in_before_old_ones_go(
    percent: float, expected: list[str]
) -> None:
    from controlplane.translate.endpoint import rolling_endpoints

    assert rolling_endpoints(["a1", "a2"], ["b1", "b2"], percent) == expected
