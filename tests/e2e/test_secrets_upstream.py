"""Upstream mTLS end to end (issue 4): a real Envoy presents its group's certificate
(served over SDS) to a real TLS upstream that requires client certificates from our CA,
and verifies the upstream's certificate against our CA."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.secrets import CertificateAuthority
from controlplane.spiffe import group_id as spiffe_id
from controlplane.store import EmbeddedEtcd
from tests.e2e.test_secrets import FIRST_CONFIG_S, etcd, our_ca  # noqa: F401 (fixture)
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e


def mtls_yaml(*, port: int, upstream_port: int, active: str = "v1") -> str:
    # v2 is the same upstream, but requires a name its certificate does not carry.
    return f"""
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-http}}
spec: {{group: edge, port: {port}, address: 127.0.0.1}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: ledger}}
spec: {{listener: edge-http, prefix: /, upstream: ledger}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: ledger}}
spec:
  active: {active}
  versions:
    v1:
      endpoints: ["127.0.0.1:{upstream_port}"]
      tls: {{clientCertificate: auto, sni: localhost, subjectAltNames: [ledger]}}
    v2:
      endpoints: ["127.0.0.1:{upstream_port}"]
      tls: {{clientCertificate: auto, subjectAltNames: [payments.internal]}}
  timeout: 5s
"""


def tls_upstream(ca: CertificateAuthority, port: int, tmp_path: Path) -> Upstream:
    """An HTTPS echo upstream whose certificate our CA issued; it requires client
    certificates chaining to `ca`."""
    issued = ca.issue("ledger", now=time.time(), lifetime_s=3600)
    cert, key, ca_file = tmp_path / "ledger.crt", tmp_path / "ledger.key", tmp_path / "ca.crt"
    cert.write_text(issued.cert_pem)
    key.write_bytes(issued.key_pem.get_secret_value())
    ca_file.write_text(ca.cert_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(cert, key)
    return Upstream("v1", port=port, tls=context).start_in_thread()


def request(port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/through-envoy")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get(port: int) -> dict[str, object]:
    status, body = request(port)
    assert status == 200, (status, body[:200])
    answer: dict[str, object] = json.loads(body)
    return answer


def test_envoy_presents_its_group_certificate_to_an_mtls_upstream(
    tmp_path: Path, etcd: EmbeddedEtcd,  # noqa: F811 (fixture)
    envoy_factory: Callable[..., Envoy],
) -> None:
    serve = ServeProcess(tmp_path / "cp", etcd=etcd).start()
    upstream: Upstream | None = None
    try:
        port, upstream_port = free_port(), free_port()
        result = cli(["apply", "-f", "-"], server=serve.admin,
                     stdin=mtls_yaml(port=port, upstream_port=upstream_port))
        assert result.code == 0, result.err
        # The group has no TLS listener: its certificate exists for the upstream alone.
        ca = wait_for_sync(lambda: our_ca(etcd, serve.data_dir), timeout=10,
                           message="the CA is created for the mTLS upstream")
        upstream = tls_upstream(ca, upstream_port, tmp_path)
        envoy = envoy_factory(serve, "edge-1", "edge")

        answer = wait_for_sync(lambda: get(port), timeout=FIRST_CONFIG_S,
                               message="a request through Envoy reaches the mTLS upstream")
        assert answer["version"] == "v1"
        assert f"URI:{spiffe_id('edge')}" in upstream.peer_sans, upstream.peer_sans

        # CDS names the certificate; only SDS carries it.
        clusters = json.dumps(envoy.config_dump("dynamic_active_clusters"))
        assert "cert-edge" in clusters and "BEGIN" not in clusters
        assert "BEGIN PRIVATE KEY" not in serve.log()

        # An upstream whose certificate lacks the required name is refused. (Switching
        # `active` changes routes only; both clusters are warm.)
        result = cli(["apply", "-f", "-"], server=serve.admin, stdin=mtls_yaml(
            port=port, upstream_port=upstream_port, active="v2"))
        assert result.code == 0, result.err
        wait_for_sync(lambda: request(port)[0] == 503, timeout=5,
                      message="a certificate without the required name is refused")
    finally:
        if upstream is not None:
            upstream.stop_thread()
        serve.stop()
