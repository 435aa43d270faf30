"""`serve --tls-dir`: the xDS port requires a client certificate from our CA, and a
proxy's group is the one its certificate names, whatever node cluster it claims."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
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
        proxy_pair = ((proxy_tls / "proxy.crt").read_bytes(),
                      (proxy_tls / "proxy.key").read_bytes())
        # No certificate: the server takes the connection and closes it in the handshake
        # (a dead server would refuse it) ...
        code, details = asyncio.run(_fetch_clusters(cp.xds, ca_pem))
        assert code == grpc.StatusCode.UNAVAILABLE and "Socket closed" in details, details
        # ... and is alive: right after, the same call with a proxy certificate is served.
        code, details = asyncio.run(_fetch_clusters(cp.xds, ca_pem, proxy_pair))
        assert code == grpc.StatusCode.OK and "payments|v1" in details, details
    finally:
        for envoy in envoys:
            envoy.stop()
        cp.stop()


async def _fetch_clusters(addr: str, ca: bytes, pair: tuple[bytes, bytes] | None = None
                          ) -> tuple[grpc.StatusCode, str]:
    """Fetch group `edge`'s clusters over TLS, with a client certificate (`pair`: its PEM
    and key) or none: (OK, the cluster names) or (the call's code, its details)."""
    cert, key = pair if pair is not None else (None, None)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                         certificate_chain=cert)
    async with grpc.aio.secure_channel(addr, creds) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources()
        try:
            await call.write(discovery_pb2.DiscoveryRequest(
                node=base_pb2.Node(id="probe-1", cluster="edge"),
                type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"))
            response = await asyncio.wait_for(call.read(), 5)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        finally:
            call.cancel()
        names = sorted(cluster_pb2.Cluster.FromString(r.value).name for r in response.resources)
        return grpc.StatusCode.OK, " ".join(names)
