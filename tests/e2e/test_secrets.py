"""Secrets end to end (issue 4): real `controlplane serve` + real etcd + real Envoy.

HTTPS through Envoy with a certificate our CA issued (served over SDS); `cert rotate`
reaches new connections within 2 s while a keep-alive connection opened before keeps
working; the upstream receives the credential Envoy injects, and the new value right
after `credential rotate`; no request fails meanwhile; no secret in any CLI output.
An mTLS listener accepts a client certificate from our CA and refuses a client without.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from controlplane.secrets import CertificateAuthority, SealingKey
from controlplane.secrets.records import decode_ca
from controlplane.store import EmbeddedEtcd, Keys
from controlplane.store.kv import EtcdKV
from tests.support.controlplane import CliResult, ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

FIRST_CONFIG_S = 15.0
NEW_SERIAL_S = 2.0


def config_yaml(*, port: int, upstream_port: int, secret_file: Path) -> str:
    return f"""
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-https}}
spec: {{group: edge, port: {port}, address: 127.0.0.1, tls: {{certificate: auto}}}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: payments}}
spec: {{listener: edge-https, prefix: /, upstream: payments}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: payments}}
spec:
  active: v1
  versions:
    v1: {{endpoints: ["127.0.0.1:{upstream_port}"], credential: payments-key}}
  timeout: 5s
---
apiVersion: controlplane/v1
kind: Credential
metadata: {{name: payments-key}}
spec: {{header: x-api-key, valueFrom: {{file: "{secret_file}"}}}}
---
apiVersion: controlplane/v1
kind: Credential
metadata: {{name: unused-inline}}
spec: {{header: Authorization, value: "Bearer inline-{secret_file.stem}"}}
"""


def mtls_config_yaml(*, port: int, upstream_port: int) -> str:
    """`config_yaml` with an mTLS listener and no credentials."""
    config = config_yaml(port=port, upstream_port=upstream_port,
                         secret_file=Path("/unused")).replace(
        "tls: {certificate: auto}", "tls: {certificate: auto, mtls: true}")
    config = config.split("---\napiVersion: controlplane/v1\nkind: Credential")[0]
    return config.replace(", credential: payments-key", "")


def _context() -> ssl.SSLContext:
    # The test checks the serial itself; the CA is not exported to clients yet.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Https:
    """One keep-alive HTTPS connection to Envoy."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                                context=_context())

    def get(self, path: str = "/") -> tuple[int, dict[str, str]]:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        headers: dict[str, str] = json.loads(body)["headers"] if response.status == 200 else {}
        return response.status, headers

    def serial(self) -> str:
        assert self.conn.sock is not None
        sock = self.conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        return f"{x509.load_der_x509_certificate(der).serial_number:x}"

    def close(self) -> None:
        self.conn.close()


def fresh_get(port: int, path: str = "/") -> dict[str, str]:
    """Headers the upstream saw for one request on a new connection."""
    client = Https(port)
    try:
        status, headers = client.get(path)
        assert status == 200, status
        return headers
    finally:
        client.close()


def new_connection_serial(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
            _context().wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return f"{x509.load_der_x509_certificate(der).serial_number:x}"


class Load(threading.Thread):
    """Requests on fresh connections until stopped; counts failures (status != 200) and
    records the serials of the certificates Envoy served."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self.values: set[str] = set()
        self.serials: set[str] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            client = Https(self.port)
            try:
                status, headers = client.get("/load")
                if status == 200:
                    self.ok += 1
                    self.values.add(headers.get("x-api-key", ""))
                    self.serials.add(client.serial())
                else:
                    self.failed.append(f"status {status}")
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append(repr(exc))
            finally:
                client.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def test_tls_and_credential_rotation(
    serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy], tmp_path: Path,
) -> None:
    outputs: list[CliResult] = []

    def run(args: list[str], stdin: str | None = None) -> CliResult:
        result = cli(args, server=serve.admin, stdin=stdin)
        outputs.append(result)
        assert result.code == 0, result.err
        return result

    first, second = f"first-{secrets.token_hex(8)}", f"second-{secrets.token_hex(8)}"
    secret_file = tmp_path / "payments-key"
    secret_file.write_text(first + "\n")
    upstream = upstream_factory("v1")
    port = free_port()
    config = config_yaml(port=port, upstream_port=upstream.port, secret_file=secret_file)
    run(["apply", "-f", "-"], stdin=config)
    envoy = envoy_factory(serve, "edge-1", "edge")

    # HTTPS through Envoy with the auto certificate; the credential is injected.
    headers = wait_for_sync(lambda: fresh_get(port), timeout=FIRST_CONFIG_S,
                            message="HTTPS through Envoy")
    assert headers["x-api-key"] == first
    keep_alive = Https(port)
    status_code, headers = keep_alive.get("/before-rotation")
    assert status_code == 200 and headers["x-api-key"] == first
    old_serial = keep_alive.serial()
    assert new_connection_serial(port) == old_serial

    load = Load(port)
    load.start()
    try:
        time.sleep(0.3)
        rotated = run(["cert", "rotate", "--group", "edge"])
        started = time.monotonic()
        assert f"certificate/edge rotated: serial {old_serial} -> " in rotated.out
        new_serial = rotated.out.strip().rsplit(" ", 1)[-1]
        wait_for_sync(lambda: new_connection_serial(port) == new_serial,
                      timeout=NEW_SERIAL_S, message="a new connection sees the new serial")
        took = time.monotonic() - started
        print(f"new serial on new connections after {took * 1000:.0f} ms")

        # The keep-alive connection opened before the rotation keeps working (old cert).
        status_code, headers = keep_alive.get("/after-rotation")
        assert status_code == 200 and headers["x-api-key"] == first
        assert keep_alive.serial() == old_serial

        # credential rotate: the upstream receives the new value at once.
        new_file = tmp_path / "payments-key.new"
        new_file.write_text(second + "\n")
        out = run(["credential", "rotate", "payments-key", "--from-file", str(new_file)])
        assert "credential payments-key rotated: generation 2 is now sent by Envoy" in out.out
        started = time.monotonic()
        wait_for_sync(lambda: fresh_get(port).get("x-api-key") == second,
                      timeout=NEW_SERIAL_S, message="the upstream receives the new value")
        print(f"new credential value after {(time.monotonic() - started) * 1000:.0f} ms")
        status_code, headers = keep_alive.get("/after-credential")
        assert status_code == 200 and headers["x-api-key"] == second
        time.sleep(0.3)
    finally:
        load.stop()
    assert load.ok > 10, load.ok
    assert not load.failed, load.failed[:5]
    assert load.values <= {first, second}, "only our values reach the upstream"

    # --emergency is audited as a revocation; the secret never shows in CLI output.
    run(["credential", "rotate", "payments-key", "--emergency"])  # re-reads valueFrom file
    wait_for_sync(lambda: fresh_get(port).get("x-api-key") == first,
                  timeout=NEW_SERIAL_S, message="emergency rotation back to the file value")
    audit = run(["audit", "-o", "json"])
    assert "credential/revoke" in audit.out and "cert/rotate" in audit.out
    run(["get", "credentials"])
    run(["get", "credentials", "-o", "yaml"])
    run(["get", "credential", "unused-inline", "-o", "json"])
    run(["get", "listeners", "-o", "yaml"])
    run(["apply", "-f", "-", "--dry-run"], stdin=config.replace("address: 127.0.0.1",
                                                               "address: 127.0.0.2"))
    inline = f"inline-{secret_file.stem}"
    captured = "".join(r.out + r.err for r in outputs) + serve.log()
    for value in (first, second, inline, "BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY"):
        assert value not in captured, f"{value[:12]}... leaked into CLI output or logs"
    # The proxy got only what it uses: no secret for the unused inline credential.
    dump = json.dumps(envoy.config_dump())
    assert "credential-unused-inline" not in dump
    keep_alive.close()



ROTATIONS = 10


def test_no_request_fails_over_ten_rotations_under_continuous_traffic(
    serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy], tmp_path: Path,
) -> None:
    secret_file = tmp_path / "payments-key"
    secret_file.write_text(f"value-{secrets.token_hex(8)}\n")
    upstream = upstream_factory("v1")
    port = free_port()
    applied = cli(["apply", "-f", "-"], server=serve.admin, stdin=config_yaml(
        port=port, upstream_port=upstream.port, secret_file=secret_file))
    assert applied.code == 0, applied.err
    envoy_factory(serve, "edge-1", "edge")
    wait_for_sync(lambda: fresh_get(port), timeout=FIRST_CONFIG_S, message="HTTPS through Envoy")
    first = new_connection_serial(port)

    load = Load(port)
    load.start()
    rotated: list[str] = []
    try:
        wait_for_sync(lambda: first in load.serials, timeout=NEW_SERIAL_S,
                      message="traffic flows before the first rotation")
        for i in range(ROTATIONS):
            result = cli(["cert", "rotate", "--group", "edge"], server=serve.admin)
            assert result.code == 0, result.err
            serial = result.out.strip().rsplit(" ", 1)[-1]
            # The next rotation starts only once the traffic itself got this serial.
            wait_for_sync(lambda s=serial: s in load.serials, timeout=NEW_SERIAL_S * 2,
                          message=f"rotation {i + 1}: the traffic sees serial {serial}")
            rotated.append(serial)
    finally:
        load.stop()
    assert not load.failed, f"{len(load.failed)} failed of {load.ok + len(load.failed)}: " \
        f"{load.failed[:5]}"
    assert len(set(rotated)) == ROTATIONS and first not in rotated
    assert set(rotated) | {first} <= load.serials
    print(f"{ROTATIONS} rotations, {load.ok} requests, 0 failed, "
          f"{len(load.serials)} serials seen")


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    server = asyncio.run(EmbeddedEtcd.start(tmp_path / "etcd"))
    try:
        yield server
    finally:
        asyncio.run(server.stop())


def our_ca(etcd: EmbeddedEtcd, data_dir: Path, *, suffix: bytes = b"") -> CertificateAuthority:
    """The control plane's CA, read from etcd and unsealed with the replica's key: a test
    stands in for an operator issuing a client certificate. `suffix=b"-next"`: the new
    CA of a rotation in its first step (trusted, not issuing yet)."""
    async def read() -> bytes:
        kv = EtcdKV([etcd.endpoint], tls=etcd.tls)
        try:
            got = await kv.get(Keys().secret_ca + suffix)
            assert got is not None, "no CA in etcd"
            return got.value
        finally:
            await kv.close()
    sealing = SealingKey.load(tls_dir=None, data_dir=data_dir, environ={})
    cert_pem, key_pem = decode_ca(asyncio.run(read()), sealing)
    return CertificateAuthority.from_pem(cert_pem, key_pem)


def test_mtls_listener_requires_a_client_certificate_from_our_ca(
    tmp_path: Path, etcd: EmbeddedEtcd, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy],
) -> None:
    serve = ServeProcess(tmp_path / "cp", etcd=etcd).start()
    try:
        upstream = upstream_factory("v1")
        port = free_port()
        result = cli(["apply", "-f", "-"], server=serve.admin,
                     stdin=mtls_config_yaml(port=port, upstream_port=upstream.port))
        assert result.code == 0, result.err
        envoy_factory(serve, "edge-1", "edge")
        ca = our_ca(etcd, serve.data_dir)
        (tmp_path / "ca.pem").write_text(ca.cert_pem)
        client = ca.issue("client", now=time.time(), lifetime_s=3600)
        (tmp_path / "client.pem").write_text(client.cert_pem)
        (tmp_path / "client.key").write_bytes(client.key_pem.get_secret_value())

        def request(with_cert: bool) -> int:
            context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            if with_cert:
                context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
            conn = http.client.HTTPSConnection("localhost", port, timeout=3, context=context)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                return response.status
            finally:
                conn.close()

        # The server certificate verifies against our CA, with hostname checks on.
        wait_for_sync(lambda: request(with_cert=True) == 200, timeout=FIRST_CONFIG_S,
                      message="mTLS request with a client certificate from our CA")
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            request(with_cert=False)
    finally:
        serve.stop()
