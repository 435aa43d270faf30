"""Names as endpoints, end to end: a real DNS server on 127.0.0.1 whose answers the test
changes, two upstream instances on 127.0.0.2 and 127.0.0.3 at the same port, so the
answer alone decides which one a real Envoy sends requests to."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.test_backbone import edge_yaml
from tests.support.controlplane import ServeProcess, cli
from tests.support.dns_server import DnsServer
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.served import Served
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

FIRST_CONFIG_S = 15.0  # Envoy start + first ADS exchange on a loaded 2-core machine
FOLLOW_S = 10.0  # a 1 s TTL, the leader's write, the watch, the push, on a loaded machine
NAME = "payments.test"


def config(port: int, endpoint: str) -> str:
    return edge_yaml(port=port, versions=f'    v1: {{endpoints: ["{endpoint}"]}}')


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def serve_dns(tmp_path: Path, dns: DnsServer) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path / "cp", extra_args=("--dns-server", dns.address)).start()
    try:
        yield proc
    finally:
        proc.stop()


def endpoints(cp: ServeProcess) -> dict[str, object]:
    result = cli(["get", "endpoints", "payments", "-o", "json"], server=cp.admin)
    assert result.code == 0, result.err
    (v1,) = json.loads(result.out)["versions"]
    return dict(v1)


def test_requests_follow_the_answers_and_a_dead_name_keeps_its_last_good(
        serve_dns: ServeProcess, dns: DnsServer, upstream_factory: Callable[..., Upstream],
        envoy_factory: Callable[..., Envoy]) -> None:
    cp = serve_dns
    port = free_port("127.0.0.2")
    upstream_factory("a", host="127.0.0.2", port=port)
    upstream_factory("b", host="127.0.0.3", port=port)
    listener = free_port()
    dns.set(NAME, ["127.0.0.2"], ttl=1)
    result = cli(["apply", "-f", "-"], server=cp.admin, stdin=config(listener, f"{NAME}:{port}"))
    assert result.code == 0, result.err
    envoy_factory(cp, "edge-1", "edge")
    served = Served(listener)
    failures, only = served.failures, served.only

    wait_for_sync(only("a"), FIRST_CONFIG_S, message="requests reach 127.0.0.2")
    v1 = endpoints(cp)
    assert v1["addresses"] == [{"address": f"127.0.0.2:{port}", "source": f"dns:{NAME}"}]
    assert [n["status"] for n in v1["names"]] == ["ok"]  # type: ignore[attr-defined]

    failures.clear()  # Envoy's first requests may race its first config
    dns.set(NAME, ["127.0.0.2", "127.0.0.3"], ttl=1)  # an address added: nothing fails
    wait_for_sync(lambda: served() == "b", FOLLOW_S, message="requests reach 127.0.0.3 too")
    assert {served() for _ in range(20)} == {"a", "b"}
    assert not failures, failures

    dns.set(NAME, ["127.0.0.3"], ttl=1)
    wait_for_sync(only("b"), FOLLOW_S, message="127.0.0.2 is gone")

    dns.fail(NAME)  # SERVFAIL from now on: the last good answer stays
    wait_for_sync(lambda: [n["status"] for n in endpoints(cp)["names"]] == ["failing"],
                  FOLLOW_S, message="get endpoints shows the failure")
    assert all(served() == "b" for _ in range(10))
    v1 = endpoints(cp)
    assert v1["addresses"] == [{"address": f"127.0.0.3:{port}", "source": f"dns:{NAME}"}]
    table = cli(["get", "endpoints", "payments"], server=cp.admin)
    assert table.code == 0 and "failing: " in table.out and "SERVFAIL" in table.out, table

    dns.set(NAME, ["127.0.0.2"], ttl=1)  # resolves again
    wait_for_sync(only("a"), FOLLOW_S, message="back on 127.0.0.2")

    # Bad endpoints: exit 2, each named at once, nothing written.
    before = cli(["get", "upstreams", "-o", "json"], server=cp.admin).out
    bad = 'http://payments.test:80", "payments.test:0", "pay_ments.test:80'
    result = cli(["apply", "-f", "-"], server=cp.admin, stdin=config(listener, bad))
    assert result.code == 2 and "spec.versions.v1.endpoints" in result.err, result
    for reason in ("without a scheme", "1-65535", "RFC 1123"):
        assert reason in result.err, result.err
    assert cli(["get", "upstreams", "-o", "json"], server=cp.admin).out == before


def test_a_bad_dns_server_flag_exits_2(tmp_path: Path) -> None:
    result = cli(["serve", "--dns-server", "dns.example:53", "--data-dir", str(tmp_path)])
    assert result.code == 2 and "--dns-server" in result.err, result
