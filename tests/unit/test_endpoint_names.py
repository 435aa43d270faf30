"""Names as endpoints: what is a valid `HOST:PORT`, and what a version stands for once
its names have discovered addresses (pure: model and translate, no DNS)."""

from __future__ import annotations

import pytest

from controlplane.discovery.lookup import clamp_ttl, parse_servers
from controlplane.discovery.resolver import NameState, discovered_sets, names_by_version
from controlplane.errors import InvalidInputError
from controlplane.model import DesiredState, parse_yaml
from controlplane.model.endpoints import (
    Discovered,
    discovered_from_json,
    discovered_to_json,
    parse_endpoint,
)
from controlplane.translate import translate
from tests.support.states import PAYMENTS_EDGE

STATE = PAYMENTS_EDGE.replace(
    'versions: {v1: {endpoints: ["127.0.0.1:9001"]}, v2: {endpoints: ["127.0.0.1:9002"]}}',
    'versions: {v1: {endpoints: ["payments-v1.internal:8080", "10.0.0.9:8080", '
    '"other.internal:9090"]}, v2: {endpoints: ["10.0.0.7:80"]}}')


@pytest.mark.parametrize(("text", "host", "port", "is_name"), [
    pytest.param("10.0.0.7:8080", "10.0.0.7", 8080, False, id="ipv4"),
    pytest.param("[::1]:80", "::1", 80, False, id="ipv6"),
    pytest.param("Payments-V2.prod.svc.cluster.local:8080",
                 "payments-v2.prod.svc.cluster.local", 8080, True, id="name-lowercased"),
    pytest.param("localhost:1", "localhost", 1, True, id="single-label"),
    pytest.param("3com.example:65535", "3com.example", 65535, True, id="digit-first-label"),
])
def test_valid_endpoints(text: str, host: str, port: int, is_name: bool) -> None:
    hp = parse_endpoint(text)
    assert (hp.host, hp.port, hp.is_name) == (host, port, is_name)


@pytest.mark.parametrize(("text", "reason"), [
    pytest.param("http://a.example:80", "scheme", id="scheme"),
    pytest.param("a.example:80/path", "scheme or a path", id="path"),
    pytest.param("a.example:65536", "1-65535", id="port-too-big"),
    pytest.param("a.example:http", "1-65535", id="port-name"),
    pytest.param("a.example", "port is missing", id="no-port"),
    pytest.param("-a.example:80", "RFC 1123", id="leading-hyphen"),
    pytest.param("a..example:80", "RFC 1123", id="empty-label"),
    pytest.param(f"{'a' * 64}.example:80", "RFC 1123", id="long-label"),
    pytest.param("[::1:80", r"\[ADDRESS\]:PORT", id="open-bracket"),
    pytest.param("[10.0.0.1]:80", "not an IPv6", id="bracketed-ipv4"),
    pytest.param("::1:80", "brackets", id="bare-ipv6"),
    pytest.param("10.0.0.256:80", "numeric label", id="bad-ipv4"),
])
def test_invalid_endpoints(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_endpoint(text)


def test_every_bad_endpoint_is_named_at_once() -> None:
    text = STATE.replace('["10.0.0.7:80"]', '["ftp://x:1", "y:0", "10.0.0.7:80"]')
    with pytest.raises(InvalidInputError) as info:
        parse_yaml(text)
    (error,) = info.value.errors
    assert "spec.versions.v2.endpoints" in error.location
    assert "ftp://x:1" in error.reason and "'y:0'" in error.reason


def test_names_differing_in_case_are_one_endpoint() -> None:
    text = STATE.replace('["10.0.0.7:80"]', '["A.example:80", "a.example:80"]')
    with pytest.raises(InvalidInputError, match="unique"):
        parse_yaml(text)


def test_discovered_round_trips_and_rejects_garbage() -> None:
    items = (Discovered("10.0.0.1:80", "dns:a.example"), Discovered("[::1]:80", "dns:a.example"))
    assert discovered_from_json(discovered_to_json(items)) == items
    for raw in (b"{}", b'[{"address": "x"}]', b'[{"address": "nope", "source": "dns:a"}]'):
        with pytest.raises(ValueError):
            discovered_from_json(raw)


def state_with(discovered: dict[tuple[str, str], tuple[Discovered, ...]]) -> DesiredState:
    return DesiredState.of(parse_yaml(STATE), discovered=discovered)


def test_a_name_never_resolved_gives_no_address() -> None:
    state = state_with({})
    assert [a.address for a in state.addresses("payments", "v1")] == ["10.0.0.9:8080"]


def test_names_expand_in_place_and_stale_records_are_ignored() -> None:
    state = state_with({("payments", "v1"): (
        Discovered("10.1.0.1:8080", "dns:payments-v1.internal"),
        Discovered("10.1.0.2:8080", "dns:payments-v1.internal"),
        Discovered("10.0.0.9:8080", "dns:payments-v1.internal"),  # also listed: counted once
        Discovered("10.3.0.1:8080", "dns:removed.internal"),  # no longer listed
        Discovered("10.1.0.1:9999", "dns:payments-v1.internal"),  # no longer at this port
    )})
    assert [(a.address, a.source) for a in state.addresses("payments", "v1")] == [
        ("10.1.0.1:8080", "dns:payments-v1.internal"),
        ("10.1.0.2:8080", "dns:payments-v1.internal"),
        ("10.0.0.9:8080", "dns:payments-v1.internal"),
    ]


def test_translate_sends_discovered_addresses_over_eds() -> None:
    state = state_with({("payments", "v1"): (
        Discovered("[fd00::1]:9090", "dns:other.internal"),
        Discovered("10.1.0.1:8080", "dns:payments-v1.internal"),
    )})
    resources = translate(state, group="edge")
    (v1,) = [e for e in resources.endpoints if e.cluster_name == "payments|v1"]
    got = [(lb.endpoint.address.socket_address.address,
            lb.endpoint.address.socket_address.port_value)
           for lb in v1.endpoints[0].lb_endpoints]
    assert got == [("10.1.0.1", 8080), ("10.0.0.9", 8080), ("fd00::1", 9090)]


def test_discovered_sets_follow_the_last_good_answers() -> None:
    state = state_with({})
    wanted = names_by_version(state)
    assert set(wanted) == {("payments", "v1")}
    names = {"payments-v1.internal": NameState(addresses=("10.1.0.2", "10.1.0.1")),
             "other.internal": NameState()}  # never resolved: nothing from it
    (only,) = discovered_sets(wanted, names).values()
    assert [d.address for d in only] == ["10.1.0.1:8080", "10.1.0.2:8080"]
    assert discovered_sets(wanted, {}) == {}


def test_dns_server_flag_and_ttl_clamp() -> None:
    assert parse_servers("127.0.0.1:5353,[::1]:53") == (("127.0.0.1", 5353), ("::1", 53))
    for bad in ("dns.example:53", "127.0.0.1", "127.0.0.1:0", ""):
        with pytest.raises(InvalidInputError, match="--dns-server"):
            parse_servers(bad)
    assert (clamp_ttl(0), clamp_ttl(7), clamp_ttl(86400)) == (1.0, 7.0, 30.0)
