"""`bootstrap --tls-dir`: the xDS connection uses the proxy's certificate and accepts only
the control plane's (its SPIFFE ID pinned); Envoy accepts the bootstrap."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from controlplane.secrets.ca import CertificateAuthority
from controlplane.spiffe import group_id
from controlplane.translate.bootstrap import bootstrap
from tests.support.envoy import envoy_binary


def test_mtls_bootstrap_validates_with_real_envoy(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(now=1_700_000_000)
    issued = ca.issue_client("edge", uri=group_id("edge"), now=1_700_000_000, lifetime_s=3600)
    (tmp_path / "ca.crt").write_text(ca.cert_pem)
    (tmp_path / "proxy.crt").write_text(issued.cert_pem)
    (tmp_path / "proxy.key").write_bytes(issued.key_pem.get_secret_value())
    config = bootstrap(node_id="edge-1", group="edge", xds_host="127.0.0.1", xds_port=18000,
                       admin_port=9901, tls_dir=str(tmp_path))
    socket = config["static_resources"]["clusters"][0]["transport_socket"]
    context = socket["typed_config"]["common_tls_context"]
    assert context["alpn_protocols"] == ["h2"]
    assert context["tls_certificates"][0]["private_key"] == {
        "filename": f"{tmp_path}/proxy.key"}  # a path, never the key itself
    # A chain to our CA is not enough: it signs proxies' certificates too.
    assert context["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://controlplane/server"}}]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:]
