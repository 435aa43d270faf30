"""The embedded etcd's PKI is made once, kept while valid, renewed near its end."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography import x509

from controlplane.store.etcd_pki import (
    LEAF_LIFETIME_S,
    RENEW_BEFORE_S,
    client_tls,
    ensure,
    server_tls,
)


def files(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((data / "etcd-tls").iterdir())}


def test_made_private_and_kept_while_valid(tmp_path: Path) -> None:
    now = time.time()
    ensure(tmp_path, now=now)
    first = files(tmp_path)
    assert set(first) == {"ca.crt", "ca.key", "server.crt", "server.key",
                          "client.crt", "client.key"}
    assert all((tmp_path / "etcd-tls" / n).stat().st_mode & 0o777 == 0o600 for n in first)
    assert (tmp_path / "etcd-tls").stat().st_mode & 0o777 == 0o700
    ensure(tmp_path, now=now + 86400)
    assert files(tmp_path) == first


def test_renewed_near_the_end_or_when_a_file_is_foreign(tmp_path: Path) -> None:
    now = time.time()
    ensure(tmp_path, now=now)
    first = files(tmp_path)
    ensure(tmp_path, now=now + LEAF_LIFETIME_S - RENEW_BEFORE_S + 60)
    renewed = files(tmp_path)
    assert renewed["client.crt"] != first["client.crt"]
    ensure(tmp_path / "other", now=now)
    (tmp_path / "etcd-tls" / "client.crt").write_bytes(
        (tmp_path / "other" / "etcd-tls" / "client.crt").read_bytes())
    ensure(tmp_path, now=now)
    again = files(tmp_path)
    assert again["ca.crt"] != renewed["ca.crt"]  # all of it made anew
    ca = x509.load_pem_x509_certificate((tmp_path / "etcd-tls" / "ca.crt").read_bytes())
    for tls in (client_tls(tmp_path), server_tls(tmp_path)):
        assert tls.cert is not None
        x509.load_pem_x509_certificate(tls.cert.read_bytes()).verify_directly_issued_by(ca)


def test_only_the_server_certificate_may_serve(tmp_path: Path) -> None:
    ensure(tmp_path, now=time.time())
    usages = {}
    for name, tls in (("client", client_tls(tmp_path)), ("server", server_tls(tmp_path))):
        assert tls.cert is not None
        cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
        usages[name] = {u._name for u in cert.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value}
    assert usages == {"client": {"clientAuth"}, "server": {"serverAuth", "clientAuth"}}
