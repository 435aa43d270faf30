"""A proxy's group comes from its certificate's SPIFFE URI SAN."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2

from controlplane.errors import AuthenticationError
from controlplane.secrets.ca import CertificateAuthority
from controlplane.spiffe import group_id as spiffe_id
from controlplane.xds.identity import (
    certificate_identity,
    group_of_certificate,
    peer_certificate_group,
    peer_node,
)


def test_the_group_is_read_from_the_spiffe_uri() -> None:
    ca = CertificateAuthority.create(now=1_700_000_000)
    issued = ca.issue("edge", now=1_700_000_000, lifetime_s=3600)
    assert group_of_certificate(issued.cert_pem.encode()) == "edge"
    assert group_of_certificate(ca.cert_pem.encode()) is None  # the CA names no group
    assert group_of_certificate(b"not a certificate") is None
    assert group_of_certificate(issued.cert_pem.encode(), prefix="spiffe://other/group/") is None


class _Context:
    """What `peer_certificate_group` reads of a gRPC context: the peer's certificate."""

    def __init__(self, pem: str) -> None:
        self._pem = pem.encode()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}


def test_a_certificate_for_one_node_serves_only_that_node_id() -> None:
    ca = CertificateAuthority.create(now=1_700_000_000)
    bound = ca.issue("edge", now=1_700_000_000, lifetime_s=3600,
                     uri=spiffe_id("edge", "edge-1")).cert_pem
    wide = ca.issue("edge", now=1_700_000_000, lifetime_s=3600).cert_pem
    assert certificate_identity(bound.encode()) == ("edge", "edge-1")
    assert certificate_identity(wide.encode()) == ("edge", "")
    ctx = _Context(bound)
    assert peer_certificate_group(base_pb2.Node(id="edge-1", cluster="edge"),
                                  ctx) == "edge"  # type: ignore[arg-type]
    assert peer_node(ctx) == "edge-1"  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="is for node 'edge-1'"):
        peer_certificate_group(base_pb2.Node(id="edge-2", cluster="edge"),
                               ctx)  # type: ignore[arg-type]
    assert peer_certificate_group(base_pb2.Node(id="anything", cluster="edge"),
                                  _Context(wide)) == "edge"  # type: ignore[arg-type]
