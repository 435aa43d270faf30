"""The embedded etcd accepts only this control plane (issue 15). Before, it listened in
plaintext on 127.0.0.1 with its port in a world-readable file: any local user could
`etcdctl put` config or tokens and read everything. Now both its ports want a client
certificate from its own CA, whose key is 0600 in the 0700 data dir; and `serve --etcd`
takes the same guard for an external etcd (--etcd-ca/--etcd-cert/--etcd-key)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controlplane.store import EmbeddedEtcd
from controlplane.store.etcd_pki import client_tls, ensure
from controlplane.store.kv import EtcdTLS
from tests.support.controlplane import REPO, ServeProcess
from tests.support.etcd_access import etcdctl, serve_endpoint

pytestmark = [pytest.mark.reliability]


def put(endpoint: str, tls: EtcdTLS | None, *flags: str) -> subprocess.CompletedProcess[str]:
    """`etcdctl put` of a forged admin token record, as a local attacker would try it."""
    command = etcdctl(endpoint, tls, *flags, "--dial-timeout=2s", "--command-timeout=3s",
                      "put", "/controlplane/tokens/" + "f" * 64, '{"role":"admin"}')
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_embedded_etcd_takes_only_its_own_client_certificate(
    serve: ServeProcess, tmp_path: Path
) -> None:
    data = serve.data_dir
    https = serve_endpoint(data)
    ours = client_tls(data)
    assert mode(data) == 0o700
    for private in ["etcd-ports.json", "etcd.log", "serve.lock", "etcd-tls/ca.key",
                    "etcd-tls/client.key", "etcd-tls/server.key", "secrets.key"]:
        assert mode(data / private) == 0o600, private
    assert mode(data / "etcd-tls") == 0o700

    plaintext = put(https.replace("https://", "http://"), None)
    assert plaintext.returncode != 0, plaintext.stdout
    no_certificate = put(https, None, f"--cacert={ours.ca}")
    assert no_certificate.returncode != 0, no_certificate.stdout
    assert "bad certificate" in no_certificate.stderr or "certificate required" in \
        no_certificate.stderr, no_certificate.stderr[-300:]
    ensure(tmp_path / "elsewhere", now=time.time())  # another CA's pair
    other = client_tls(tmp_path / "elsewhere")
    foreign = put(https, EtcdTLS(ca=ours.ca, cert=other.cert, key=other.key))
    assert foreign.returncode != 0, foreign.stdout
    # The control: the same command with the data dir's pair is what etcd takes.
    owner = put(https, ours)
    assert owner.returncode == 0 and owner.stdout.strip() == "OK", owner.stderr

    # The peer port too (raft messages from anyone would be worse than puts).
    peer = json.loads((data / "etcd-ports.json").read_text())["peer"]
    assert peer_version(peer, ours, with_certificate=False) is None
    assert peer_version(peer, ours, with_certificate=True) == 200


def peer_version(port: int, tls: EtcdTLS, *, with_certificate: bool) -> int | None:
    """The HTTP status of `GET /version` on etcd's peer port, or None when refused."""
    context = ssl.create_default_context(cafile=str(tls.ca))
    if with_certificate:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
            head = conn.recv(64)
    except (ssl.SSLError, OSError):
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/") else None


def serve_exits(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`serve` with `args`, expected to exit by itself (stopped by its PID if not)."""
    with subprocess.Popen(
        [sys.executable, "-m", "controlplane", "serve", "--data-dir", str(tmp_path / "d"),
         "--xds-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--metrics-addr", "",
         *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_serve_checks_the_etcd_tls_flags_before_it_starts(tmp_path: Path) -> None:
    ensure(tmp_path / "pki", now=time.time())
    tls = client_tls(tmp_path / "pki")
    half = serve_exits(tmp_path, "--etcd", "https://127.0.0.1:1", "--etcd-cert", str(tls.cert))
    assert half.returncode == 2 and "--etcd-key: give --etcd-cert and --etcd-key together" \
        in half.stderr, half.stderr
    alone = serve_exits(tmp_path, "--etcd-ca", str(tls.ca))
    assert alone.returncode == 2 and "--etcd-ca: only with --etcd" in alone.stderr, alone.stderr
    missing = serve_exits(tmp_path, "--etcd", "https://127.0.0.1:1",
                          "--etcd-ca", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2 and "--etcd-ca: cannot read" in missing.stderr, \
        missing.stderr
    assert not (tmp_path / "d").exists(), "bad flags wrote nothing"


def test_serve_without_the_client_pair_is_refused_by_a_guarded_external_etcd(
    etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    refused = serve_exits(tmp_path, "--etcd", etcd.endpoint, "--etcd-ca", str(etcd.tls.ca))
    assert refused.returncode == 1, refused.stderr
    assert "store unavailable" in refused.stderr and "--etcd-cert" in refused.stderr, \
        refused.stderr[-500:]
    # The same etcd, given the pair (as every replica test does): serve runs on it.
    served = ServeProcess(tmp_path / "cp", etcd=etcd).start()
    served.stop()
    assert served.proc is not None and served.proc.returncode == 0
