"""The embedded etcd's own small PKI: it accepts only clients holding a certificate from
it, and only this control plane (and whoever can read its data dir) holds one.

Under `data_dir/etcd-tls/` (0700, every file 0600):

    ca.crt, ca.key          a CA used for nothing else (etcd must be up before the
                            control plane's own CA, kept in etcd, can be read)
    server.crt, server.key  etcd's serving and peer certificate (127.0.0.1, localhost)
    client.crt, client.key  the control plane's client certificate (clientAuth only)

Made on the first start; kept while valid and renewed (all of it) when a certificate
is missing, unreadable or within `RENEW_BEFORE_S` of its end. etcd is our child and is
restarted with us, so a renewal never leaves a connection with the old ones.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.store.kv import EtcdTLS

PKI_DIR = "etcd-tls"
CA_LIFETIME_S = 10 * 365 * 86400
LEAF_LIFETIME_S = 2 * 365 * 86400
RENEW_BEFORE_S = 30 * 86400
SKEW_S = 60


def server_tls(data_dir: Path) -> EtcdTLS:
    """etcd's side: our CA as the only trusted client issuer, and its serving pair."""
    pki = data_dir / PKI_DIR
    return EtcdTLS(ca=pki / "ca.crt", cert=pki / "server.crt", key=pki / "server.key")


def client_tls(data_dir: Path) -> EtcdTLS:
    """The control plane's side (also what an operator gives `etcdctl`: README)."""
    pki = data_dir / PKI_DIR
    return EtcdTLS(ca=pki / "ca.crt", cert=pki / "client.crt", key=pki / "client.key")


def ensure(data_dir: Path, *, now: float) -> None:
    """Make (or renew) the PKI under `data_dir/etcd-tls` unless a valid one is there."""
    pki = data_dir / PKI_DIR
    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(pki, 0o700)  # also when an older version made it with another mode
    if _valid(pki, now):
        return
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "controlplane etcd CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key, now, CA_LIFETIME_S)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    # etcd presents the server pair on its peer port too, where it is also the client.
    server_key, server = _leaf(ca, ca_key, "etcd", now, [
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ], [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    client_key, client = _leaf(ca, ca_key, "controlplane", now, [],
                               [ExtendedKeyUsageOID.CLIENT_AUTH])
    for name, data in [
        ("ca.key", _key_pem(ca_key)), ("server.key", _key_pem(server_key)),
        ("client.key", _key_pem(client_key)), ("ca.crt", _pem(ca)),
        ("server.crt", _pem(server)), ("client.crt", _pem(client)),
    ]:
        write_private(pki / name, data)


def _valid(pki: Path, now: float) -> bool:
    try:
        ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
        for name in ("server", "client"):
            cert = x509.load_pem_x509_certificate((pki / f"{name}.crt").read_bytes())
            serialization.load_pem_private_key((pki / f"{name}.key").read_bytes(), None)
            cert.verify_directly_issued_by(ca)
            if cert.not_valid_after_utc.timestamp() - now < RENEW_BEFORE_S:
                return False
        return ca.not_valid_after_utc.timestamp() - now >= RENEW_BEFORE_S
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str,
          now: float, sans: list[x509.GeneralName],
          usages: list[x509.ObjectIdentifier]) -> tuple[ec.EllipticCurvePrivateKey,
                                                        x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(name, ca.subject, key, now, LEAF_LIFETIME_S)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             now: float, lifetime_s: float) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - SKEW_S, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + lifetime_s, dt.UTC))
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, data: bytes) -> None:
    """Write through a 0600 temporary file renamed over `path`: never readable by others,
    never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
