"""`serve --tls-dir`: the admin API requires a client certificate from our CA; a user
certificate names its holder and role, the role gates each call, and the audit log
names the holder. A proxy's certificate or none at all gets nowhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_backbone import edge_yaml
from tests.support.controlplane import ServeProcess, cli

pytestmark = pytest.mark.e2e


def test_user_certificates_authenticate_and_their_role_authorizes(tmp_path: Path) -> None:
    tls = tmp_path / "server-tls"
    cp = ServeProcess(tmp_path / "cp", extra_args=("--tls-dir", str(tls))).start()
    try:
        # serve wrote an admin user's certificate beside its own (the host's admin.conf).
        assert (tls / "client.key").stat().st_mode & 0o077 == 0
        text = edge_yaml(port=10000, v1=9001, v2=9002)
        applied = cli(["apply", "-f", "-"], server=cp.admin, stdin=text)
        assert applied.code == 0, applied.err

        alice = tmp_path / "alice"
        issued = cli(["cert", "issue", "--user", "alice", "--role", "viewer", "--out",
                      str(alice)], server=cp.admin)
        assert issued.code == 0, issued.err
        as_alice = {"CONTROLPLANE_TLS_DIR": str(alice)}
        got = cli(["get", "upstreams"], server=cp.admin, env=as_alice)
        assert got.code == 0 and "payments" in got.out, got.err
        changed = text.replace("active: v1", "active: v2")
        denied = cli(["apply", "-f", "-"], server=cp.admin, stdin=changed, env=as_alice)
        assert denied.code == 1 and "cert:alice has role viewer" in denied.err, denied.err

        # A proxy's certificate is from the same CA but names no user.
        proxy = tmp_path / "proxy"
        assert cli(["cert", "issue", "--group", "edge", "--out", str(proxy)],
                   server=cp.admin).code == 0
        (proxy / "client.crt").write_bytes((proxy / "proxy.crt").read_bytes())
        (proxy / "client.key").write_bytes((proxy / "proxy.key").read_bytes())
        refused = cli(["get", "upstreams"], server=cp.admin,
                      env={"CONTROLPLANE_TLS_DIR": str(proxy)})
        assert refused.code == 1 and "names no admin user" in refused.err, refused.err

        # No certificate: the TLS handshake itself fails; plaintext gets nothing either.
        plain = cli(["get", "upstreams"], server=cp.admin, env={"CONTROLPLANE_TLS_DIR": ""})
        assert plain.code == 1, plain.out

        entries = json.loads(cli(["audit", "-o", "json"], server=cp.admin).out)
        actors = {e["actor"] for e in entries if e["kind"] in ("Upstream", "Certificate")}
        assert "cert:admin" in actors
        assert not any(e["actor"] == "cert:alice" for e in entries)  # denied: nothing written
    finally:
        cp.stop()
