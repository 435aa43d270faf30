"""Streams that reuse a real proxy's node id, or claim one too large to report, cannot
steer a rollout: with a real Envoy NACKing the config, the rollout halts on that NACK
whatever they send (issue 14; before, a twin in another group made the fleet look
"0/0 ACKed" and the rollout went to 100%)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.e2e.test_backbone import FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.e2e.test_rollout import rollout_yaml, status, wait_status
from tests.support.ads import AdsClient
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy, start_envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = [pytest.mark.reliability]

TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
HUGE_ID = "x" * (2 * 1024 * 1024)


@contextlib.contextmanager
def nacking_envoy(cp: ServeProcess, start: Callable[[], Envoy],
                  upstream_factory: Callable[..., Upstream]) -> Iterator[Envoy]:
    """A real Envoy `edge-1` of group `edge` serving v1, then NACKing the LDS version
    the group is given (a second listener on a port another socket holds): a step
    carrying that version can never be ACKed by it."""
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(cp, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    envoy = start()
    version_behind(port, FIRST_CONFIG_S)("v1")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        apply(cp, edge_yaml(port=squatter.getsockname()[1], v1=v1.port, v2=v2.port,
                            upstream="other", route="other", listener="second-http"))

        def nack() -> str:
            proxies = json.loads(cli(["get", "proxies", "-o", "json"], server=cp.admin).out)
            return "".join(str(p["types"]["LDS"]["lastNack"]) for p in proxies["items"]
                           if p["nodeId"] == "edge-1")

        wait_for_sync(nack, timeout=10, message="the real Envoy NACKs LDS")
        yield envoy


def assert_halted_on_the_nack(cp: ServeProcess) -> None:
    apply(cp, rollout_yaml(steps="[10, 50, 100]", interval="1s"))
    doc = wait_status(cp, 20, phase="Paused")
    assert "second-http" in str(doc["message"]) or "bind" in str(doc["message"]), doc
    assert doc["weight"] == 0 and doc["proxies"] == {"acked": 0, "total": 1}, doc
    # Halted for good: the steps' intervals pass and nothing moves on.
    with pytest.raises(TimeoutError):
        wait_status(cp, 3, phase="Succeeded")
    assert status(cp)["phase"] == "Paused"


@contextlib.asynccontextmanager
async def hostile(target: str, *clients: tuple[AdsClient, base_pb2.Node]
                  ) -> AsyncIterator[list[AdsClient]]:
    opened: list[AdsClient] = []
    tasks = []
    try:
        for client, node in clients:
            opened.append(await client.__aenter__())
            tasks.append(asyncio.create_task(client.ack_all(node, TYPES)))
        yield opened
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in opened:
            await client.close()


def test_twins_in_other_groups_and_oversized_ids_cannot_hide_a_nack(
        serve: ServeProcess, upstream_factory: Callable[..., Upstream],
        envoy_factory: Callable[..., Envoy]) -> None:
    with nacking_envoy(serve, lambda: envoy_factory(serve, "edge-1", "edge"),
                       upstream_factory):
        async def run() -> None:
            async with hostile(
                serve.xds,
                (AdsClient(serve.xds), base_pb2.Node(id="edge-1", cluster="other")),
                (AdsClient(serve.xds, delta=True),
                 base_pb2.Node(id="edge-1", cluster="payments-canary")),
                (AdsClient(serve.xds), base_pb2.Node(id=HUGE_ID, cluster="edge")),
                (AdsClient(serve.xds, delta=True), base_pb2.Node(id="edge-2",
                                                                 cluster=HUGE_ID)),
            ) as clients:
                twin, delta_twin, huge, huge_group = clients
                for refused in (huge, huge_group):
                    await asyncio.to_thread(wait_for_sync, lambda c=refused: c.error,
                                            timeout=10, message="the huge identity refused")
                    assert refused.error is not None
                    assert refused.error.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "at most 256" in (refused.error.details() or "")
                await asyncio.to_thread(assert_halted_on_the_nack, serve)
                assert twin.error is None and delta_twin.error is None  # served, not counted
                listed = json.loads(cli(["get", "proxies", "-o", "json"],
                                        server=serve.admin).out)["items"]
                assert sorted((p["group"], p["nodeId"]) for p in listed) == [
                    ("edge", "edge-1"), ("other", "edge-1"), ("payments-canary", "edge-1")]

        asyncio.run(run())


def test_under_mtls_a_node_id_is_tied_to_its_certificate(
        tmp_path: Path, upstream_factory: Callable[..., Upstream]) -> None:
    tls = tmp_path / "server-tls"
    cp = ServeProcess(tmp_path / "cp", extra_args=("--tls-dir", str(tls))).start()
    envoys: list[Envoy] = []
    try:
        certs = {}
        for who, extra in (("real", ["--node-id", "edge-1"]), ("group-wide", []),
                           ("other-node", ["--node-id", "edge-2"])):
            certs[who] = tmp_path / who
            issued = cli(["cert", "issue", "--group", "edge", *extra,
                          "--out", str(certs[who])], server=cp.admin)
            assert issued.code == 0, issued.err

        def start() -> Envoy:
            boot = cli(["bootstrap", "--node-id", "edge-1", "--group", "edge",
                        "--admin-port", str(free_port()), "--xds-addr", cp.xds,
                        "--tls-dir", str(certs["real"])])
            assert boot.code == 0, boot.err
            envoys.append(start_envoy(yaml.safe_load(boot.out), tmp_path / "envoy"))
            return envoys[-1]

        def creds(who: str) -> grpc.ChannelCredentials:
            return grpc.ssl_channel_credentials(
                root_certificates=(tls / "ca.crt").read_bytes(),
                private_key=(certs[who] / "proxy.key").read_bytes(),
                certificate_chain=(certs[who] / "proxy.crt").read_bytes())

        with nacking_envoy(cp, start, upstream_factory):
            async def run() -> None:
                for who, delta, code, says in (
                        ("group-wide", False, grpc.StatusCode.PERMISSION_DENIED,
                         "another client certificate"),
                        ("group-wide", True, grpc.StatusCode.PERMISSION_DENIED,
                         "another client certificate"),
                        ("other-node", False, grpc.StatusCode.UNAUTHENTICATED,
                         "is for node 'edge-2'")):
                    async with hostile(cp.xds, (
                            AdsClient(cp.xds, delta=delta, credentials=creds(who)),
                            base_pb2.Node(id="edge-1", cluster="edge"))) as [intruder]:
                        await asyncio.to_thread(wait_for_sync, lambda: intruder.error,
                                                timeout=10, message="the intruder refused")
                        assert intruder.error is not None
                        assert intruder.error.code() == code, (who, delta)
                        assert says in (intruder.error.details() or ""), who
                await asyncio.to_thread(assert_halted_on_the_nack, cp)

            asyncio.run(run())
            assert envoys[0].alive()
    finally:
        for envoy in envoys:
            envoy.stop()
        cp.stop()
