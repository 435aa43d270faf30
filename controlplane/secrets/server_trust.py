"""Which CAs the xDS and admin ports trust under `serve --tls-dir`, kept current.

The server's own certificate comes from --tls-dir and stays (clients and Envoy
bootstraps verify it with the ca.crt they were given). Client certificates, though,
come from the vault's CA, which `controlplane cert rotate --ca` replaces: a server
trusting only the --tls-dir CA would refuse every certificate issued after a rotation.
So the trusted set is the --tls-dir CA plus every CA the vault trusts at the moment
(the current one and, during a rotation, the next or the previous), and gRPC reads it
before each TLS handshake.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from controlplane.spiffe import SERVER_ID, user_id

if TYPE_CHECKING:
    from controlplane.secrets.vault import Vault

log = logging.getLogger(__name__)

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


def pem_bundle(*bundles: str | bytes) -> bytes:
    """The certificates of `bundles` in order, each once."""
    seen: list[bytes] = []
    for bundle in bundles:
        data = bundle.encode() if isinstance(bundle, str) else bundle
        for block in _PEM.findall(data):
            block = block.strip() + b"\n"
            if block not in seen:
                seen.append(block)
    return b"".join(seen)


def server_certificate(cert_pem: bytes, ca_bundle: str | bytes
                       ) -> Literal["pinned", "unpinned", "foreign"]:
    """Whether a server certificate names `spiffe://controlplane/server` ("pinned"), or
    else was signed by a CA of `ca_bundle` ("unpinned": ours, from before identities were
    pinned) or not ("foreign": someone else's, or unreadable)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if SERVER_ID in sans.get_values_for_type(x509.UniformResourceIdentifier):
            return "pinned"
    except (ValueError, x509.ExtensionNotFound):
        return "foreign"
    for block in _PEM.findall(pem_bundle(ca_bundle)):
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(block))
        except (ValueError, TypeError, InvalidSignature):
            continue
        return "unpinned"
    return "foreign"


class ServerTrust:
    """The server's key pair and the CAs whose client certificates it accepts."""

    def __init__(self, key_pem: bytes, cert_pem: bytes, anchor_pem: bytes,
                 vault_ca_pem: str = "") -> None:
        self._pair = (key_pem, cert_pem)
        self.anchor_pem = anchor_pem
        """The CA that signed the server's certificate: what a client must trust."""
        self._vault_ca_pem = vault_ca_pem
        self._config = self._build()

    def trusted(self) -> bytes:
        """The CA certificates client certificates are verified against."""
        return pem_bundle(self.anchor_pem, self._vault_ca_pem)

    def update(self, vault_ca_pem: str) -> None:
        """The vault trusts these CAs now (after a rotation step): accept their clients
        from the next handshake on."""
        if vault_ca_pem != self._vault_ca_pem:
            self._vault_ca_pem = vault_ca_pem
            self._config = self._build()  # one attribute: gRPC's thread sees old or new

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for one server; each gets its own fetcher (a fetcher answers None
        once its server has the current configuration)."""
        return grpc.dynamic_ssl_server_credentials(
            self._config, self._fetcher(self._config), require_client_authentication=True)

    def _fetcher(self, initial: grpc.ServerCertificateConfiguration
                 ) -> Callable[[], grpc.ServerCertificateConfiguration | None]:
        served = [initial]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            config = self._config
            if config is served[0]:
                return None
            served[0] = config
            return config

        return fetch

    def _build(self) -> grpc.ServerCertificateConfiguration:
        pairs: Iterable[tuple[bytes, bytes]] = [self._pair]
        return grpc.ssl_server_certificate_configuration(pairs, root_certificates=self.trusted())


async def load_server_trust(tls_dir: Path, vault: Vault, vault_ca_pem: str, *,
                            hosts: Sequence[str]) -> ServerTrust:
    """mTLS for the xDS and admin ports: ca.crt, server.crt and server.key from `tls_dir`,
    issued by our CA (and written there) when absent, naming the server's SPIFFE ID and
    `hosts` (those of --xds-addr and --admin-addr). Clients must present a certificate
    from it or from a CA the vault trusts (`vault_ca_pem`; see `ServerTrust`). Also
    writes client.crt/client.key, an `admin` user's certificate, so that
    `controlplane --tls-dir DIR ...` works on this host from the start (like kubeadm's
    admin.conf): keep the directory as private as the CA."""
    paths = {name: tls_dir / name for name in ("ca.crt", "server.crt", "server.key")}
    present = all(p.exists() for p in paths.values())
    found = (server_certificate(paths["server.crt"].read_bytes(), vault_ca_pem)
             if present else "pinned")
    if found == "foreign":
        log.warning("%s names no %s and our CA did not sign it: Envoy bootstraps and the "
                    "CLI refuse it; add that URI SAN, or remove server.crt and server.key "
                    "for serve to issue one", paths["server.crt"], SERVER_ID)
    # One we issued before identities were pinned: replace it (never someone else's).
    stale = found == "unpinned"
    if not present or stale:
        ca_pem, issued = await vault.server_identity(hosts=hosts, actor="controlplane")
        tls_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
        # Clients holding the old ca.crt keep verifying the server after a re-issue.
        paths["ca.crt"].write_bytes(
            pem_bundle(paths["ca.crt"].read_bytes(), ca_pem) if stale else ca_pem.encode())
        _write_pair(tls_dir, "server", issued.cert_pem, issued.key_pem.get_secret_value())
        log.info("issued the server certificate (%s) into %s%s", SERVER_ID, tls_dir,
                 ": the one there named no server identity" if stale else "")
    if not (tls_dir / "client.crt").exists():
        _, user = await vault.identity("admin", actor="controlplane",
                                       uri=user_id("admin", "admin"))
        _write_pair(tls_dir, "client", user.cert_pem, user.key_pem.get_secret_value())
        log.info("issued an admin user certificate into %s (client.crt, client.key)", tls_dir)
    return ServerTrust(paths["server.key"].read_bytes(), paths["server.crt"].read_bytes(),
                       paths["ca.crt"].read_bytes(), vault_ca_pem)


def _write_pair(directory: Path, name: str, cert_pem: str, key_pem: bytes) -> None:
    (directory / f"{name}.crt").write_text(cert_pem)
    key = directory / f"{name}.key"
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
