"""Our certificate authority: one self-signed CA and the three kinds of certificate it issues.

Keys are ECDSA P-256; certificates are valid from one minute ago (clock skew) for
`lifetime_s`. Private keys leave this module only as `SecretBytes`.

    issue()         a proxy group's serving certificate, sent over SDS: Envoy serves it
                    on `tls:` listeners and presents it to mTLS upstreams, so it carries
                    serverAuth and clientAuth, `DNS:<group>`, `DNS:<group>.controlplane.local`,
                    localhost and 127.0.0.1 (a client on the proxy's host can verify it)
    issue_client()  an identity that only ever connects to us: a proxy's xDS certificate
                    or an admin user's (`cert issue`); clientAuth only, its SPIFFE URI and
                    no host name, so it cannot pass for any server
    issue_server()  the control plane's own (xDS and admin ports): serverAuth only,
                    `spiffe://controlplane/server`, which Envoy bootstraps and the CLI pin
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretBytes

from controlplane.spiffe import SERVER_ID, SERVER_NAME, group_id

CA_LIFETIME_S = 10 * 365 * 86400
SKEW_S = 60
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
"""Where a server on this host is reached; what only a serving certificate may name."""


def host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for `hosts`, each once, in order: an IP address or a DNS name
    (wildcard and unspecified addresses, which name no host, are skipped)."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip("[]")
        name: x509.GeneralName
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if not host:
                continue
            name = x509.DNSName(host)
        else:
            if ip.is_unspecified:
                continue
            name = x509.IPAddress(ip)
        if name not in names:
            names.append(name)
    return names


def _time(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> SecretBytes:
    return SecretBytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its key, as PEM; `serial` is lowercase hex."""

    cert_pem: str
    key_pem: SecretBytes
    serial: str
    not_before: float
    not_after: float


class CertificateAuthority:
    """Issues certificates; build with `create()` or `from_pem()`."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = key

    def __repr__(self) -> str:
        return f"CertificateAuthority(serial={self._cert.serial_number:x}, key=[redacted])"

    @property
    def serial(self) -> str:
        """The CA certificate's serial, lowercase hex."""
        return f"{self._cert.serial_number:x}"

    @property
    def cert_pem(self) -> str:
        return self._cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> SecretBytes:
        return _key_pem(self._key)

    @classmethod
    def create(cls, *, now: float, common_name: str = "controlplane CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - SKEW_S))
            .not_valid_after(_time(now + CA_LIFETIME_S))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: str, key_pem: bytes) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC key")
        return cls(cert, key)

    def issue(self, group: str, *, now: float, lifetime_s: float,
              uri: str | None = None) -> IssuedCertificate:
        """A proxy group's serving (and upstream client) certificate, sent over SDS (or,
        with `uri`, one naming that SPIFFE ID, `group` being its common name)."""
        return self._sign(group, now=now, lifetime_s=lifetime_s, sans=[
            x509.UniformResourceIdentifier(uri or group_id(group)),
            x509.DNSName(group), x509.DNSName(f"{group}.controlplane.local"),
            *host_names(LOOPBACK_NAMES[:2]),
        ], usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])

    def issue_client(self, name: str, *, uri: str, now: float,
                     lifetime_s: float) -> IssuedCertificate:
        """A client-only certificate for `uri` (a proxy's xDS identity, an admin user),
        `name` being its common name: no host names and no serverAuth, so no TLS client
        accepts it as a server."""
        return self._sign(name, now=now, lifetime_s=lifetime_s,
                          sans=[x509.UniformResourceIdentifier(uri)],
                          usages=[ExtendedKeyUsageOID.CLIENT_AUTH])

    def issue_server(self, *, hosts: Sequence[str], now: float,
                     lifetime_s: float) -> IssuedCertificate:
        """The control plane's serving certificate: `spiffe://controlplane/server`, the
        name the CLI pins, loopback, and `hosts` (where it is reached); serverAuth only."""
        return self._sign("controlplane", now=now, lifetime_s=lifetime_s, sans=[
            x509.UniformResourceIdentifier(SERVER_ID), x509.DNSName(SERVER_NAME),
            *host_names([*LOOPBACK_NAMES, *hosts]),
        ], usages=[ExtendedKeyUsageOID.SERVER_AUTH])

    def _sign(self, common_name: str, *, now: float, lifetime_s: float,
              sans: list[x509.GeneralName],
              usages: list[x509.ObjectIdentifier]) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        not_before, not_after = now - SKEW_S, now + lifetime_s
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(_time(not_before))
            .not_valid_after(_time(not_after))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=_key_pem(key),
            serial=f"{serial:x}",
            not_before=not_before,
            not_after=not_after,
        )
