"""Secrets without etcd: CA issuing, sealing, redaction, and what translate puts in a group."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from pydantic import SecretStr

from controlplane.errors import ControlPlaneError, TranslationError
from controlplane.model import DesiredState, parse_yaml
from controlplane.secrets import CertificateAuthority, SealingKey
from controlplane.secrets.records import CertRecord, decode_cert, encode_cert
from controlplane.translate import GroupCertificate, SecretMaterial, translate
from controlplane.translate.render import render

STATE = """
apiVersion: controlplane/v1
kind: Listener
metadata: {name: https}
spec: {group: edge, port: 10443, tls: {certificate: auto}}
---
apiVersion: controlplane/v1
kind: Listener
metadata: {name: plain}
spec: {group: other, port: 10080}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: r}
spec: {listener: https, upstream: payments}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: r2}
spec: {listener: plain, upstream: ledger}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec: {active: v1, versions: {v1: {endpoints: ["127.0.0.1:9001"], credential: key}}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: ledger}
spec: {active: v1, versions: {v1: {endpoints: ["127.0.0.1:9002"]}}}
---
apiVersion: controlplane/v1
kind: Credential
metadata: {name: key}
spec: {header: x-api-key, value: "very-secret-value"}
"""


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(now=1_700_000_000)


def test_issued_certificate_names_the_group_and_chains_to_the_ca(
        ca: CertificateAuthority) -> None:
    issued = ca.issue("edge", now=1_700_000_000, lifetime_s=3600)
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "edge" in sans.get_values_for_type(x509.DNSName)
    assert f"{cert.serial_number:x}" == issued.serial
    assert issued.not_after - issued.not_before == pytest.approx(3600 + 60)
    assert "PRIVATE" not in repr(issued) and "PRIVATE" not in repr(ca)


def test_sealed_records_round_trip_and_need_the_same_key(ca: CertificateAuthority) -> None:
    sealing = SealingKey(SealingKey.generate())
    record = CertRecord(ca.issue("edge", now=1_700_000_000, lifetime_s=3600), 1_700_001_800)
    raw = encode_cert(record, sealing)
    assert b"PRIVATE KEY" not in raw
    assert decode_cert(raw, sealing) == record
    with pytest.raises(ControlPlaneError, match="cannot be unsealed"):
        decode_cert(raw, SealingKey(SealingKey.generate()))
    assert "redacted" in repr(sealing)


def test_sealing_key_is_created_once_in_the_data_dir(tmp_path: Path) -> None:
    first = SealingKey.load(tls_dir=None, data_dir=tmp_path, environ={})
    token = first.seal(b"x")
    again = SealingKey.load(tls_dir=None, data_dir=tmp_path, environ={})
    assert again.unseal(token) == b"x"
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600


def material(ca: CertificateAuthority) -> SecretMaterial:
    issued = ca.issue("edge", now=1_700_000_000, lifetime_s=3600)
    return SecretMaterial(ca_pem=ca.cert_pem,
                          certificates={"edge": GroupCertificate(issued.cert_pem, issued.key_pem)},
                          credentials={"key": SecretStr("very-secret-value")})


def test_a_group_gets_only_its_own_secrets(ca: CertificateAuthority) -> None:
    state = DesiredState.of(parse_yaml(STATE))
    edge = translate(state, group="edge", secrets=material(ca))
    assert [s.name for s in edge.secrets] == ["cert-edge", "credential-key"]
    other = translate(state, group="other", secrets=material(ca))
    assert other.secrets == ()


def test_secrets_stay_out_of_other_resources_and_renders(ca: CertificateAuthority) -> None:
    state = DesiredState.of(parse_yaml(STATE))
    resources = translate(state, group="edge", secrets=material(ca))
    for message in (*resources.listeners, *resources.clusters, *resources.routes):
        raw = message.SerializeToString()
        assert b"very-secret-value" not in raw and b"PRIVATE KEY" not in raw
    text = "".join(render(resources).values())
    assert "very-secret-value" not in text and "PRIVATE KEY" not in text
    assert "[redacted]" in text


def test_missing_material_is_a_translation_error() -> None:
    state = DesiredState.of(parse_yaml(STATE))
    with pytest.raises(TranslationError) as info:
        translate(state, group="edge")
    assert "no certificate was issued" in str(info.value)
    assert "Credential/key has no value yet" in str(info.value)
