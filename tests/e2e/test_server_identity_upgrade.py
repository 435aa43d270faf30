"""A `serve --tls-dir` from before pinned identities left a server certificate that names
no `spiffe://controlplane/server`: the CLI and new Envoy bootstraps would refuse it. serve
replaces it at its next start when our CA signed it (one of another CA is never touched:
tests/unit/test_pinned_certificates.py), keeping the old CA in ca.crt so clients given
that file still verify the server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509

from controlplane.store import EmbeddedEtcd
from tests.e2e.test_secrets import our_ca
from tests.support.controlplane import ServeProcess

pytestmark = pytest.mark.e2e

SERVER_ID = "spiffe://controlplane/server"


def _uris(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sans.get_values_for_type(x509.UniformResourceIdentifier)


def test_serve_replaces_the_unpinned_server_certificate_it_issued_before(
    tmp_path: Path, etcd: EmbeddedEtcd,
) -> None:
    tls = tmp_path / "server-tls"
    cp = ServeProcess(tmp_path / "cp", etcd=etcd, extra_args=("--tls-dir", str(tls)))
    try:
        cp.start()
        assert _uris(tls / "server.crt") == [SERVER_ID]
        first_ca = (tls / "ca.crt").read_text()
        cp.stop()

        # What serve wrote before: a group-style certificate naming `controlplane-xds`.
        old = our_ca(etcd, cp.data_dir).issue("controlplane-xds", now=time.time(),
                                              lifetime_s=3600)
        (tls / "server.crt").write_text(old.cert_pem)
        (tls / "server.key").write_bytes(old.key_pem.get_secret_value())
        cp.start()  # waits until the CLI, which pins the server, gets an answer
        assert _uris(tls / "server.crt") == [SERVER_ID]
        assert first_ca in (tls / "ca.crt").read_text()
        assert "named no server identity" in cp.log()
    finally:
        cp.stop()
