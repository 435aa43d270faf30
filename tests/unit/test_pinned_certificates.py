"""Which certificate can serve as what (issue 15, pinned identities): the server's names
`spiffe://controlplane/server`; proxies' and users' are client-only with no host name;
a group's serving certificate (SDS) keeps what Envoy's listeners and upstreams need."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane.cli.diagnose import _host_port
from controlplane.errors import InvalidInputError
from controlplane.model import parse_yaml
from controlplane.secrets.ca import CertificateAuthority
from controlplane.secrets.server_trust import server_certificate
from controlplane.spiffe import SERVER_ID, SERVER_NAME, group_id, user_id
from controlplane.translate.sds import allowed_peer_matchers

NOW = 1_700_000_000


def _parsed(pem: str) -> tuple[set[object], list[str], list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (usages, sans.get_values_for_type(x509.UniformResourceIdentifier),
            sans.get_values_for_type(x509.DNSName),
            [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)])


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(now=NOW)


@pytest.mark.parametrize("uri", [
    pytest.param(group_id("edge"), id="a-proxys-xds-certificate"),
    pytest.param(group_id("edge", "edge-1"), id="a-nodes-xds-certificate"),
    pytest.param(user_id("alice", "admin"), id="a-users-certificate"),
])
def test_client_certificates_can_serve_nothing(ca: CertificateAuthority, uri: str) -> None:
    issued = ca.issue_client("edge", uri=uri, now=NOW, lifetime_s=3600)
    usages, uris, dns, ips = _parsed(issued.cert_pem)
    assert usages == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert (uris, dns, ips) == ([uri], [], [])


def test_the_server_certificate_names_the_server_and_where_it_listens(
    ca: CertificateAuthority,
) -> None:
    issued = ca.issue_server(hosts=["cp.example.com", "10.0.0.7", "0.0.0.0", "", "::"],
                             now=NOW, lifetime_s=3600)
    usages, uris, dns, ips = _parsed(issued.cert_pem)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert uris == [SERVER_ID]
    assert dns == [SERVER_NAME, "localhost", "cp.example.com"]
    assert ips == ["127.0.0.1", "::1", "10.0.0.7"]  # wildcard binds name no host


def test_a_groups_serving_certificate_still_serves_listeners_and_upstreams(
    ca: CertificateAuthority,
) -> None:
    usages, uris, dns, ips = _parsed(ca.issue("edge", now=NOW, lifetime_s=3600).cert_pem)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert uris == [group_id("edge")] and SERVER_ID not in uris
    assert SERVER_NAME not in dns and "localhost" in dns and ips == ["127.0.0.1"]


def test_no_group_or_user_name_can_be_the_server_name() -> None:
    # Names are single RFC 1123 labels; the pinned name has a dot and no .local suffix.
    assert "." in SERVER_NAME and not SERVER_NAME.endswith(".controlplane.local")


def test_server_certificate_tells_pinned_ours_and_foreign(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create(now=NOW)
    pinned = ca.issue_server(hosts=[], now=NOW, lifetime_s=60).cert_pem.encode()
    old_style = ca.issue("controlplane-xds", now=NOW, lifetime_s=60).cert_pem.encode()
    foreign = other.issue("controlplane-xds", now=NOW, lifetime_s=60).cert_pem.encode()
    bundle = other.cert_pem + ca.cert_pem
    assert server_certificate(pinned, bundle) == "pinned"
    assert server_certificate(old_style, bundle) == "unpinned"  # ours: serve re-issues it
    assert server_certificate(foreign, ca.cert_pem) == "foreign"  # never overwritten
    assert server_certificate(b"not a certificate", bundle) == "foreign"


def _listener(tls: str) -> str:
    return ("apiVersion: controlplane/v1\nkind: Listener\nmetadata: {name: l}\n"
            f"spec: {{group: edge, port: 10000, tls: {tls}}}\n")


@pytest.mark.parametrize(("tls", "field", "reason"), [
    pytest.param("{certificate: auto, allowedGroups: [edge]}", "spec.tls:", "mtls: true",
                 id="allowed-groups-without-mtls"),
    pytest.param("{mtls: true, allowedGroups: [Edge_1]}", "spec.tls.allowedGroups.0",
                 "should match pattern", id="a-group-that-is-no-name"),
    pytest.param('{mtls: true, allowedSubjectAltNames: ["a.example\\r\\nx: y"]}',
                 "spec.tls.allowedSubjectAltNames.0", "control characters",
                 id="crlf-in-a-san"),
])
def test_allowed_peers_are_validated(tls: str, field: str, reason: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_yaml(_listener(tls))
    assert field in str(caught.value) and reason in str(caught.value), caught.value


def test_allowed_groups_admit_their_nodes_but_not_a_longer_group_name() -> None:
    matchers = allowed_peer_matchers(["edge"], ["spiffe://partner/x", "partner.example"])
    shown = [(m.san_type, m.matcher.WhichOneof("match_pattern"),
              getattr(m.matcher, m.matcher.WhichOneof("match_pattern") or "exact"))
             for m in matchers]
    uri, dns = matchers[0].URI, matchers[0].DNS
    assert shown == [
        (uri, "exact", "spiffe://controlplane/group/edge"),
        (uri, "prefix", "spiffe://controlplane/group/edge/node/"),  # not .../edge2
        (uri, "exact", "spiffe://partner/x"),
        (dns, "exact", "partner.example"),
    ]


@pytest.mark.parametrize(("target", "address"), [
    ("127.0.0.1:18001", ("127.0.0.1", 18001)),
    ("[::1]:18001", ("::1", 18001)),
    ("dns:///cp.example.com:443", ("cp.example.com", 443)),
    ("unix:/run/cp.sock", None),
])
def test_the_cli_probes_what_it_connected_to(target: str,
                                             address: tuple[str, int] | None) -> None:
    assert _host_port(target) == address
