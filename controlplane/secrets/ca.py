"""Our certificate authority: one self-signed CA, serving certificates for proxy groups.

Keys are ECDSA P-256. A group certificate names the group (`DNS:<group>`,
`DNS:<group>.controlplane.local`) plus `localhost` and 127.0.0.1, so a client on the
proxy's host can verify it; it is valid from one minute ago (clock skew) for
`lifetime_s`. Private keys leave this module only as `SecretBytes`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretBytes

CA_LIFETIME_S = 10 * 365 * 86400
SKEW_S = 60


TRUST_DOMAIN = "controlplane"


def spiffe_id(group: str, node_id: str = "") -> str:
    """`spiffe://controlplane/group/<group>`: who a certificate's holder is; with
    `node_id`, `.../group/<group>/node/<node_id>`: one proxy of the group."""
    base = f"spiffe://{TRUST_DOMAIN}/group/{group}"
    return f"{base}/node/{node_id}" if node_id else base


USER_PREFIX = f"spiffe://{TRUST_DOMAIN}/user/"


def user_spiffe_id(name: str, role: str) -> str:
    """`spiffe://controlplane/user/<name>/<role>`: an admin API caller and its role (the
    CA's signature vouches for both)."""
    return f"{USER_PREFIX}{name}/{role}"


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
        """A serving (and client) certificate for proxy group `group` (or, with `uri`, for
        whoever that SPIFFE ID names, `group` being its common name)."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        not_before, not_after = now - SKEW_S, now + lifetime_s
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, group)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(_time(not_before))
            .not_valid_after(_time(not_after))
            .add_extension(x509.SubjectAlternativeName([
                # The proxy's identity on the xDS connection (DESIGN.md: SPIFFE URI SAN).
                x509.UniformResourceIdentifier(uri or spiffe_id(group)),
                x509.DNSName(group), x509.DNSName(f"{group}.controlplane.local"),
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ), critical=False)
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
