"""`serve --tls-dir`: the xDS port requires a client certificate from our CA, and a
proxy's group is the one its certificate names, whatever node cluster it claims."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.e2e.test_backbone import FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy, start_envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream

pytestmark = pytest.mark.e2e


def test_the_certificate_decides_the_group_and_no_certificate_no_stream(
    tmp_path: Path, upstream_factory: Callable[..., Upstream],
) -> None:
    tls = tmp_path / "server-tls"
    cp = ServeProcess(tmp_path / "cp", extra_args=("--tls-dir", str(tls))).start()
    envoys: list[Envoy] = []
    try:
        v1, v2 = upstream_factory("v1"), upstream_factory("v2")
        edge_port, internal_port = free_port(), free_port()
        apply(cp, edge_yaml(port=edge_port, v1=v1.port, v2=v2.port))
        apply(cp, edge_yaml(port=internal_port, v1=v1.port, v2=v2.port, active="v2",
                            upstream="ledger", route="ledger", listener="internal-http",
                            group="internal"))
        proxy_tls = tmp_path / "proxy-tls"
        issued = cli(["cert", "issue", "--group", "edge", "--out", str(proxy_tls)],
                     server=cp.admin)
        assert issued.code == 0, issued.err
        assert (proxy_tls / "proxy.key").stat().st_mode & 0o077 == 0

        # The proxy claims `internal`; its certificate says `edge`.
        boot = cli(["bootstrap", "--node-id", "liar-1", "--group", "internal",
                    "--admin-port", str(free_port()), "--xds-addr", cp.xds,
                    "--tls-dir", str(proxy_tls)])
        assert boot.code == 0, boot.err
        envoy = start_envoy(yaml.safe_load(boot.out), tmp_path / "envoy")
        envoys.append(envoy)
        version_behind(edge_port, FIRST_CONFIG_S)("v1")
        assert envoy.dynamic_names("listeners") == ["edge-http"]
        assert "ledger|v1" not in envoy.dynamic_names("clusters")

        ca_pem = (tls / "ca.crt").read_bytes()
        assert asyncio.run(_ads_without_certificate(cp.xds, ca_pem)) is not None
    finally:
        for envoy in envoys:
            envoy.stop()
        cp.stop()


async def _ads_without_certificate(addr: str, ca: bytes) -> grpc.StatusCode | None:
    """Try to fetch clusters with a TLS client that has no certificate: the code it got."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(addr, creds) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources()
        try:
            await call.write(discovery_pb2.DiscoveryRequest(
                node=base_pb2.Node(id="intruder", cluster="edge"),
                type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"))
            await asyncio.wait_for(call.read(), 5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return None
