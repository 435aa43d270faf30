"""A proxy's group comes from its certificate's SPIFFE URI SAN."""

from __future__ import annotations

from controlplane.secrets.ca import CertificateAuthority
from controlplane.xds.identity import group_of_certificate


def test_the_group_is_read_from_the_spiffe_uri() -> None:
    ca = CertificateAuthority.create(now=1_700_000_000)
    issued = ca.issue("edge", now=1_700_000_000, lifetime_s=3600)
    assert group_of_certificate(issued.cert_pem.encode()) == "edge"
    assert group_of_certificate(ca.cert_pem.encode()) is None  # the CA names no group
    assert group_of_certificate(b"not a certificate") is None
    assert group_of_certificate(issued.cert_pem.encode(), prefix="spiffe://other/group/") is None
