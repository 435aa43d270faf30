"""Upstream mTLS without etcd or Envoy: the model, who needs a certificate, and the
fleet check a CA rotation waits on."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from controlplane.errors import InvalidInputError
from controlplane.fleet import ProxyReport, secrets_progress
from controlplane.model import DesiredState, parse_yaml
from controlplane.secrets.vault import needs_ca, tls_groups
from controlplane.translate import GroupCertificate, SecretMaterial, translate
from controlplane.xds.resources import SECRET
from controlplane.xds.snapshot import Snapshot

STATE = """
apiVersion: controlplane/v1
kind: Listener
metadata: {name: plain}
spec: {group: edge, port: 10080}
---
apiVersion: controlplane/v1
kind: Listener
metadata: {name: other}
spec: {group: other, port: 10081}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: ledger}
spec: {listener: plain, upstream: ledger}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: web}
spec: {listener: other, upstream: web}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: ledger}
spec:
  active: v1
  versions:
    v1: {endpoints: ["127.0.0.1:9443"], tls: {clientCertificate: auto}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: web}
spec:
  active: v1
  versions:
    v1: {endpoints: ["127.0.0.1:9080"]}
"""


def state() -> DesiredState:
    s = DesiredState.of(parse_yaml(STATE))
    s.check()
    return s


def material(cert: str) -> SecretMaterial:
    from pydantic import SecretBytes

    return SecretMaterial(
        ca_pem="ca-pem", certificates=MappingProxyType(
            {"edge": GroupCertificate(cert, SecretBytes(b"key"))}))


def test_a_group_routing_to_an_mtls_upstream_needs_a_certificate() -> None:
    assert tls_groups(state()) == ["edge"]
    assert needs_ca(state())
    resources = translate(state(), group="edge", secrets=material("cert"))
    assert sorted(s.name for s in resources.secrets) == ["cert-edge", "controlplane-ca"]
    assert translate(state(), group="other", secrets=material("cert")).secrets == ()


@pytest.mark.parametrize("tls", [
    pytest.param("{clientCertificate: maybe}", id="unknown-client-certificate"),
    pytest.param("{caFile: relative/ca.pem}", id="relative-ca-file"),
    pytest.param("{sni: ''}", id="empty-sni"),
    pytest.param("{verify: true}", id="unknown-field"),
])
def test_bad_upstream_tls_is_refused(tls: str) -> None:
    bad = STATE.replace("tls: {clientCertificate: auto}", f"tls: {tls}")
    with pytest.raises(InvalidInputError, match=r"spec\.versions\.v1\.tls"):
        parse_yaml(bad)


def sds_version(cert: str) -> str:
    return Snapshot.build(translate(state(), group="edge", secrets=material(cert))
                          .by_type_url()).version(SECRET)


def test_secrets_progress_counts_proxies_holding_secrets() -> None:
    new = material("new-cert")
    reports = [
        ProxyReport("edge-1", "edge", 1.0, {SECRET: sds_version("new-cert")}),
        ProxyReport("edge-2", "edge", 1.0, {SECRET: sds_version("old-cert")}),
        ProxyReport("other-1", "other", 1.0, {}),  # holds no secrets: not counted
    ]
    assert secrets_progress(state(), new, reports) == (1, 2)
    reports[1] = ProxyReport("edge-2", "edge", 2.0, {SECRET: sds_version("new-cert")})
    assert secrets_progress(state(), new, reports) == (2, 2)
