"""Pinned identities (issue 15): our CA signs proxies', users' and the server's
certificates, so a chain to it proves nothing about who serves. Each attack here worked
before identities were pinned:

- a proxy's certificate served as the control plane to a real Envoy, which took its
  config (the bootstrap now pins `spiffe://controlplane/server`);
- it served as the admin API to the CLI, which sent its calls (and a bearer token) there
  (the CLI now pins the server's name and explains the refusal);
- an `mtls: true` listener accepted any certificate of our CA; `allowedGroups` now
  narrows it to the groups it names, checked in a real TLS handshake through Envoy.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane.xds.resources import SECRET
from tests.e2e.test_backbone import FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy, start_envoy
from tests.support.impostor import IMPOSTOR_CLUSTER, Impostor
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

REFUSED_S = 10.0
"""Envoy retries the xDS connection every 0.1-0.5 s: a refused handshake shows at once."""


@pytest.fixture(scope="module")
def tls_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, Path]]:
    """`serve --tls-dir` and the directory of an `edge` proxy's certificate it issued."""
    root = tmp_path_factory.mktemp("pinned")
    cp = ServeProcess(root / "cp", extra_args=("--tls-dir", str(root / "server-tls"))).start()
    try:
        proxy_tls = root / "proxy-tls"
        issued = cli(["cert", "issue", "--group", "edge", "--out", str(proxy_tls)],
                     server=cp.admin)
        assert issued.code == 0, issued.err
        yield cp, proxy_tls
    finally:
        cp.stop()


async def _group_certificate(addr: str, tls: Path) -> secret_pb2.Secret:
    """Group `edge`'s serving certificate, over SDS with an `edge` proxy's certificate."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.crt").read_bytes(),
        private_key=(tls / "proxy.key").read_bytes(),
        certificate_chain=(tls / "proxy.crt").read_bytes())
    async with grpc.aio.secure_channel(addr, creds) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="edge-thief", cluster="edge"), type_url=SECRET,
            resource_names=["cert-edge"]))
        response = await asyncio.wait_for(call.read(), 10)
        call.cancel()
    assert len(response.resources) == 1, response
    secret = secret_pb2.Secret()
    response.resources[0].Unpack(secret)
    return secret


def _impostor_certificate(cp: ServeProcess, proxy_tls: Path, kind: str, out: Path) -> Path:
    """The directory of the certificate an impostor serves with: the proxy's own xDS one
    (`xds`), or what a compromised proxy of `edge` can take (`sds`): its group's serving
    certificate and key (serverAuth, localhost), asked for with that xDS certificate."""
    if kind == "xds":
        return proxy_tls
    apply(cp, edge_yaml(port=free_port(), v1=free_port(), v2=free_port(), listener="edge-https",
                        route="ledger", upstream="ledger")
          .replace("address: 127.0.0.1}", "address: 127.0.0.1, tls: {certificate: auto}}"))
    secret = asyncio.run(_group_certificate(cp.xds, proxy_tls))
    out.mkdir()
    (out / "proxy.crt").write_text(secret.tls_certificate.certificate_chain.inline_string)
    (out / "proxy.key").write_bytes(secret.tls_certificate.private_key.inline_bytes)
    return out


def _envoy(tmp_path: Path, node_id: str, xds_addr: str, tls_dir: Path) -> Envoy:
    boot = cli(["bootstrap", "--node-id", node_id, "--group", "edge",
                "--admin-port", str(free_port()), "--xds-addr", xds_addr,
                "--tls-dir", str(tls_dir)])
    assert boot.code == 0, boot.err
    return start_envoy(yaml.safe_load(boot.out), tmp_path / node_id)


@pytest.mark.parametrize(("certificate", "refusal"), [
    # Client-only (clientAuth): refused as a server certificate at all.
    pytest.param("xds", "fail_verify_error", id="the-proxys-xds-certificate"),
    # Its group's serving certificate (serverAuth, localhost): refused for its SAN.
    pytest.param("sds", "fail_verify_san", id="its-groups-sds-certificate"),
])
def test_a_proxy_certificate_cannot_serve_as_the_control_plane_to_envoy(
    certificate: str, refusal: str, tmp_path: Path, tls_serve: tuple[ServeProcess, Path],
    upstream_factory: Callable[..., Upstream],
) -> None:
    cp, proxy_tls = tls_serve
    stolen = _impostor_certificate(cp, proxy_tls, certificate, tmp_path / "stolen")
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(cp, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    impostor = Impostor().start(stolen / "proxy.crt", stolen / "proxy.key")
    envoys: list[Envoy] = []
    try:
        # Same bootstrap, same proxy certificate: one Envoy pointed at the impostor...
        fooled = _envoy(tmp_path, "edge-fooled", impostor.target, proxy_tls)
        envoys.append(fooled)
        # ...and one at the real control plane, which keeps serving.
        served = _envoy(tmp_path, "edge-served", cp.xds, proxy_tls)
        envoys.append(served)
        version_behind(port, FIRST_CONFIG_S)("v1")

        stat = f"cluster.xds_cluster.ssl.{refusal}"
        wait_for_sync(lambda: fooled.stats(stat).get(stat, 0) >= 2, timeout=REFUSED_S,
                      message=f"Envoy refusing the impostor's certificate ({refusal})")
        assert impostor.calls == [], "an ADS stream reached the impostor"
        assert fooled.stats("control_plane.connected_state") == {
            "control_plane.connected_state": 0}
        assert IMPOSTOR_CLUSTER not in fooled.dynamic_names("clusters")
        assert served.stats("control_plane.connected_state") == {
            "control_plane.connected_state": 1}
    finally:
        for envoy in envoys:
            envoy.stop()
        impostor.stop()


@pytest.mark.parametrize(("certificate", "named"), [
    pytest.param("xds", "does not verify", id="the-proxys-xds-certificate"),
    pytest.param("sds", "names spiffe://controlplane/group/edge, not "
                        "spiffe://controlplane/server", id="its-groups-sds-certificate"),
])
def test_the_cli_refuses_a_proxy_certificate_posing_as_the_admin_server(
    certificate: str, named: str, tmp_path: Path, tls_serve: tuple[ServeProcess, Path],
) -> None:
    cp, proxy_tls = tls_serve
    stolen = _impostor_certificate(cp, proxy_tls, certificate, tmp_path / "stolen")
    impostor = Impostor().start(stolen / "proxy.crt", stolen / "proxy.key")
    try:
        tls_dir = cp.tls_dir
        assert tls_dir is not None
        # The admin's own certificate, and a token the impostor would love to see.
        env = {"CONTROLPLANE_TLS_DIR": tls_dir, "CONTROLPLANE_TOKEN": "cp_secret_token"}
        fooled = cli(["get", "upstreams"], server=impostor.target, env=env)
        assert fooled.code == 1, fooled.err
        assert f"{impostor.target} is not the control plane" in fooled.err, fooled.err
        assert named in fooled.err, fooled.err
        assert impostor.calls == [], "the CLI sent a call (and its token) to the impostor"

        served = cli(["get", "upstreams"], server=cp.admin,
                     env={"CONTROLPLANE_TLS_DIR": tls_dir})
        assert served.code == 0, served.err
    finally:
        impostor.stop()


MTLS_ALLOWED = """
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-mtls}}
spec:
  group: edge
  port: {port}
  address: 127.0.0.1
  tls: {{certificate: auto, mtls: true, allowedGroups: [payments-clients]}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: payments}}
spec: {{listener: edge-mtls, prefix: /, upstream: payments}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: payments}}
spec:
  active: v1
  versions:
    v1: {{endpoints: ["127.0.0.1:{upstream_port}"]}}
"""


def _status_with(port: int, creds: Path) -> int:
    """One HTTPS request through Envoy presenting `creds`' certificate; verifies Envoy's."""
    context = ssl.create_default_context(cafile=str(creds / "ca.crt"))
    context.load_cert_chain(creds / "proxy.crt", creds / "proxy.key")
    conn = http.client.HTTPSConnection("localhost", port, timeout=3, context=context)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_an_mtls_listener_with_allowed_groups_refuses_another_groups_certificate(
    tmp_path: Path, serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy],
) -> None:
    upstream = upstream_factory("v1")
    port = free_port()
    apply(serve, MTLS_ALLOWED.format(port=port, upstream_port=upstream.port))
    envoy = envoy_factory(serve, "edge-1", "edge")
    certs: dict[str, Path] = {}
    for who, args in {"allowed": ["--group", "payments-clients"],
                      "allowed-node": ["--group", "payments-clients", "--node-id", "c-7"],
                      "other": ["--group", "intruders"],
                      "prefix": ["--group", "payments-clients2"]}.items():
        certs[who] = tmp_path / who
        issued = cli(["cert", "issue", *args, "--out", str(certs[who])], server=serve.admin)
        assert issued.code == 0, issued.err

    wait_for_sync(lambda: _status_with(port, certs["allowed"]) == 200,
                  timeout=FIRST_CONFIG_S, message="mTLS request from an allowed group")
    assert _status_with(port, certs["allowed-node"]) == 200  # a node of an allowed group
    san = "ssl.fail_verify_san"
    for who in ("other", "prefix"):  # `payments-clients2` is not `payments-clients`
        before = sum(envoy.stats(san).values())
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            _status_with(port, certs[who])
        wait_for_sync(lambda n=before: sum(envoy.stats(san).values()) > n, timeout=REFUSED_S,
                      message=f"Envoy refusing the {who} certificate for its SAN")
