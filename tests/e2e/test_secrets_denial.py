"""A proxy whose certificate names group `edge` cannot obtain group `internal`'s secrets
over a real mTLS xDS connection, whatever group its node claims; the denial is in the
serve log with the node id, the group and the secret name (issue 4)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane.xds.resources import SECRET
from tests.e2e.test_backbone import apply, edge_yaml
from tests.support.controlplane import ServeProcess, cli
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

WANTED = ["cert-edge", "cert-internal"]


async def fetch_secrets(addr: str, tls: Path) -> list[str]:
    """One SotW SDS request over ADS with the proxy's certificate: the names it got."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.crt").read_bytes(),
        private_key=(tls / "proxy.key").read_bytes(),
        certificate_chain=(tls / "proxy.crt").read_bytes())
    async with grpc.aio.secure_channel(addr, creds) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="liar-1", cluster="internal"), type_url=SECRET,
            resource_names=WANTED))
        response = await asyncio.wait_for(call.read(), 10)
        call.cancel()
    names = []
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        names.append(secret.name)
    return sorted(names)


def test_a_proxy_of_group_a_cannot_obtain_group_b_secrets(
    tmp_path: Path, upstream_factory: Callable[..., Upstream],
) -> None:
    cp = ServeProcess(tmp_path / "cp", extra_args=("--tls-dir", str(tmp_path / "srv"))).start()
    try:
        v1, v2 = upstream_factory("v1"), upstream_factory("v2")
        tls = "address: 127.0.0.1, tls: {certificate: auto}}"
        apply(cp, edge_yaml(port=free_port(), v1=v1.port, v2=v2.port)
              .replace("address: 127.0.0.1}", tls))
        apply(cp, edge_yaml(port=free_port(), v1=v1.port, v2=v2.port, upstream="ledger",
                            route="ledger", listener="internal-https", group="internal")
              .replace("address: 127.0.0.1}", tls))
        proxy_tls = tmp_path / "proxy-tls"
        issued = cli(["cert", "issue", "--group", "edge", "--out", str(proxy_tls)],
                     server=cp.admin)
        assert issued.code == 0, issued.err

        got = asyncio.run(fetch_secrets(cp.xds, proxy_tls))
        assert got == ["cert-edge"], got
        wait_for_sync(lambda: "denied secret 'cert-internal' to node 'liar-1' of group "
                              "'edge'" in cp.log(), timeout=5, message="the denial is logged")
        assert "BEGIN PRIVATE KEY" not in cp.log()
    finally:
        cp.stop()
