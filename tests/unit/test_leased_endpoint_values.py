"""Leased endpoints, pure: what a key in etcd's naming format or a registration holds,
which `endpointsFrom` is valid, which stored addresses a version takes, what the leader
writes per version, and what `endpoint register` accepts."""

from __future__ import annotations

import pytest

from controlplane.admin.registrations import checked
from controlplane.api import admin_pb2
from controlplane.discovery.leased import Wanted, leased_sets
from controlplane.discovery.naming import naming_address, registration_from, registration_value
from controlplane.errors import InvalidInputError
from controlplane.model import DesiredState, parse_yaml
from controlplane.model.endpoints import Discovered
from controlplane.translate import translate
from tests.support.states import PAYMENTS_EDGE

FROM = ('versions: {v1: {endpoints: ["127.0.0.1:9001"], endpointsFrom: {etcd: '
        'services/payments/v1}}, v2: {endpointsFrom: {registered: true}}}')
LEASED = PAYMENTS_EDGE.replace(
    'versions: {v1: {endpoints: ["127.0.0.1:9001"]}, v2: {endpoints: ["127.0.0.1:9002"]}}',
    FROM)


def state(text: str = LEASED, **discovered: tuple[Discovered, ...]) -> DesiredState:
    return DesiredState.of(parse_yaml(text), discovered={
        ("payments", version): items for version, items in discovered.items()})


@pytest.mark.parametrize(("raw", "address"), [
    pytest.param(b'{"Op":0,"Addr":"10.0.0.7:8080","Metadata":{"zone":"a"}}', "10.0.0.7:8080",
                 id="etcd-naming"),
    pytest.param(b'{"Addr":"[::1]:80"}', "[::1]:80", id="no-op-ipv6"),
])
def test_values_in_etcds_naming_format(raw: bytes, address: str) -> None:
    assert naming_address(raw) == address


@pytest.mark.parametrize(("raw", "reason"), [
    pytest.param(b"10.0.0.7:8080", "not JSON", id="plain-text"),
    pytest.param(b'["10.0.0.7:8080"]', "naming format", id="a-list"),
    pytest.param(b'{"Op":0}', "naming format", id="no-addr"),
    pytest.param(b'{"Op":1,"Addr":"10.0.0.7:8080"}', "Op 1", id="delete-op"),
    pytest.param(b'{"Op":true,"Addr":"10.0.0.7:8080"}', "Op True", id="bool-op"),
    pytest.param(b'{"Op":0,"Addr":"payments.internal:80"}', "not a name", id="a-name"),
    pytest.param(b'{"Op":0,"Addr":"10.0.0.7:0"}', "1-65535", id="bad-port"),
    pytest.param(b'{"Op":0,"Addr":"http://10.0.0.7:80"}', "scheme", id="scheme"),
    pytest.param(b"\xff\xfe", "not JSON", id="not-utf8"),
])
def test_values_not_in_the_format_are_refused_with_why(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        naming_address(raw)


def test_a_registration_round_trips_with_its_principal() -> None:
    assert registration_from(registration_value("10.0.0.7:80", "ops")) == Discovered(
        "10.0.0.7:80", "registered:ops")
    with pytest.raises(ValueError):
        registration_from(b'{"address": "10.0.0.7:80"}')


@pytest.mark.parametrize(("spec", "where", "reason"), [
    pytest.param("{endpointsFrom: {etcd: ''}}", "endpointsFrom.etcd", "printable",
                 id="empty-prefix"),
    pytest.param("{endpointsFrom: {etcd: /controlplane/resources}}", "endpointsFrom.etcd",
                 "own keys", id="our-keys"),
    pytest.param("{endpointsFrom: {etcd: /}}", "endpointsFrom.etcd", "own keys",
                 id="a-prefix-of-our-keys"),
    pytest.param("{endpointsFrom: {etcd: 'services/pay ments'}}", "endpointsFrom.etcd",
                 "without spaces", id="space"),
    pytest.param("{endpointsFrom: {etcd: " + "a" * 513 + "}}", "endpointsFrom.etcd",
                 "1-512", id="too-long"),
    pytest.param("{endpointsFrom: {}}", "endpointsFrom", "registered: true", id="nothing"),
    pytest.param("{endpointsFrom: {registered: false}}", "endpointsFrom", "registered: true",
                 id="registered-false"),
    pytest.param("{credential: null}", "v2", "endpointsFrom", id="no-source-at-all"),
])
def test_bad_endpoints_from_is_refused_naming_the_field(spec: str, where: str,
                                                        reason: str) -> None:
    text = LEASED.replace("v2: {endpointsFrom: {registered: true}}", f"v2: {spec}")
    with pytest.raises(InvalidInputError) as info:
        parse_yaml(text)
    assert any(where in e.location + e.reason and reason in e.reason
               for e in info.value.errors), info.value.errors


def test_a_version_takes_only_the_leased_sources_it_asked_for() -> None:
    mine = Discovered("10.0.0.7:80", "etcd:services/payments/v1/a")
    other_prefix = Discovered("10.0.0.8:80", "etcd:services/orders/a")
    registered = Discovered("10.0.0.9:80", "registered:ops")
    again = Discovered("127.0.0.1:9001", "etcd:services/payments/v1/b")  # = a static one
    s = state(v1=(mine, other_prefix, registered, again), v2=(registered, mine))
    assert s.addresses("payments", "v1") == [Discovered("127.0.0.1:9001", "static"), mine]
    assert s.addresses("payments", "v2") == [registered]
    clusters = {a.cluster_name: a for a in translate(s, group="edge").endpoints}
    v2 = clusters["payments|v2"].endpoints[0].lb_endpoints
    assert [e.endpoint.address.socket_address.address for e in v2] == ["10.0.0.9"]


def test_the_leader_writes_per_version_what_its_sources_hold() -> None:
    wanted = Wanted.of(state())
    assert wanted.prefixes == {("payments", "v1"): "services/payments/v1"}
    assert wanted.registered == {("payments", "v2")}
    by_prefix = {"services/payments/v1": {b"services/payments/v1/b": "10.0.0.2:80",
                                          b"services/payments/v1/a": "10.0.0.1:80",
                                          b"services/payments/v1/c": "10.0.0.1:80"}}
    registrations = {("payments", "v2"): {b"k": Discovered("10.0.0.3:80", "registered:ops")},
                     ("payments", "v1"): {b"j": Discovered("10.0.0.4:80", "registered:x")}}
    assert leased_sets(wanted, by_prefix, registrations) == {
        ("payments", "v1"): (Discovered("10.0.0.1:80", "etcd:services/payments/v1/a"),
                             Discovered("10.0.0.2:80", "etcd:services/payments/v1/b")),
        ("payments", "v2"): (Discovered("10.0.0.3:80", "registered:ops"),),
    }
    assert leased_sets(wanted, {}, {}) == {}  # an empty or unknown prefix: nothing
    registered = b"/controlplane/registered/"
    assert wanted.pending(set(), registered) == {("payments", "v1"), ("payments", "v2")}
    assert wanted.pending({b"services/payments/v1", registered}, registered) == set()


def register(upstream: str = "payments", version: str = "v2", address: str = "10.0.0.7:80",
             ttl: float = 0) -> admin_pb2.RegisterEndpointRequest:
    return admin_pb2.RegisterEndpointRequest(upstream=upstream, version=version,
                                             address=address, ttl_seconds=ttl)


def test_endpoint_register_takes_an_opted_in_version_an_ip_and_a_ttl() -> None:
    assert checked(state(), register()) == ("10.0.0.7:80", 10)
    assert checked(state(), register(address="[::1]:80", ttl=2.5)) == ("[::1]:80", 3)


@pytest.mark.parametrize(("request_", "where", "reason"), [
    pytest.param(register(version="v1"), "spec.versions.v1.endpointsFrom",
                 "registered: true", id="not-opted-in"),
    pytest.param(register(upstream="orders"), "upstream", "no Upstream", id="no-upstream"),
    pytest.param(register(version="v9"), "version", "no version", id="no-version"),
    pytest.param(register(address="payments.internal:80"), "address", "not a name",
                 id="a-name"),
    pytest.param(register(address="10.0.0.7"), "address", "port", id="no-port"),
    pytest.param(register(ttl=1), "ttl", "2s to 3600s", id="ttl-too-short"),
])
def test_endpoint_register_refuses_naming_the_field(
        request_: admin_pb2.RegisterEndpointRequest, where: str, reason: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        checked(state(), request_)
    assert any(e.location.endswith(where) and reason in e.reason
               for e in info.value.errors), info.value.errors


def test_get_endpoints_shows_where_each_address_came_from_and_idle_sources() -> None:
    from controlplane.cli.resources import _idle_sources
    from controlplane.discovery.report import report

    mine = Discovered("10.0.0.7:80", "etcd:services/payments/v1/a")
    doc = report(state(v1=(mine,)), "payments", {})
    v1, v2 = doc["versions"]
    assert v1["endpointsFrom"] == {"etcd": "services/payments/v1"}
    assert v1["addresses"] == [{"address": "127.0.0.1:9001", "source": "static"},
                               {"address": "10.0.0.7:80", "source": mine.source}]
    assert _idle_sources(v1) == []
    assert v2["endpointsFrom"] == {"registered": True} and v2["addresses"] == []
    assert [source for source, _ in _idle_sources(v2)] == ["registered:"]
