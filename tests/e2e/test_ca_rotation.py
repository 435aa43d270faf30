"""CA rotation with dual trust, end to end: real serve + etcd + Envoy (issue 4).

`cert rotate --ca` makes a new CA, trusted beside the old one; while any connected
proxy has not ACKed that bundle (a raw ADS client lags on purpose) the old CA still
issues, and clients of both CAs are accepted. Once it ACKs, the new CA issues every
group's certificate (`ca/promote`); once those are ACKed, the old CA leaves the trust
bundle (`ca/retire`) and its clients are refused, while the new CA's keep working.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from controlplane.fleet import decode
from controlplane.secrets import CertificateAuthority
from controlplane.store import EmbeddedEtcd, Keys
from controlplane.store.kv import EtcdKV
from controlplane.xds.resources import SECRET
from tests.e2e.test_secrets import (  # noqa: F401 (etcd: a fixture)
    FIRST_CONFIG_S,
    etcd,
    mtls_config_yaml,
    our_ca,
)
from tests.support.ads import AdsClient, node
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

SDS_NAMES = ["cert-edge", "controlplane-ca"]


class Client:
    """An HTTPS client presenting a certificate `ca` issued (server not verified: the
    test is about which client certificates the listener accepts)."""

    def __init__(self, ca: CertificateAuthority, name: str, tmp_path: Path) -> None:
        issued = ca.issue(name, now=time.time(), lifetime_s=3600)
        self.cert, self.key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        self.cert.write_text(issued.cert_pem)
        self.key.write_bytes(issued.key_pem.get_secret_value())

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(self.cert, self.key)
        return context

    def status(self, port: int) -> int:
        """The status of one request on a new connection; 0 if the handshake failed."""
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=3, context=self.context())
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()

    def server_issuer(self, port: int) -> str:
        """The serial of the CA that signed the certificate Envoy serves, as hex."""
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                self.context().wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            cert = x509.load_der_x509_certificate(der)
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
            return aki.value.key_identifier.hex() if aki.value.key_identifier else ""


def key_id(ca: CertificateAuthority) -> str:
    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    return cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.key_identifier.hex()


class Laggard(threading.Thread):
    """A raw ADS client in group `edge` that ACKs its first secrets, then nothing until
    `release` is set, then ACKs every response; it stays connected until `stop`."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.first_acked = threading.Event()
        self.release = threading.Event()
        self.released = threading.Event()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test
            self.error = exc

    async def _main(self) -> None:
        async with AdsClient(self.target) as client:
            await client.request(SECRET, SDS_NAMES, node=node("laggard-1", "edge"))
            latest = await client.recv(FIRST_CONFIG_S)
            await client.ack(latest, names=SDS_NAMES)
            self.first_acked.set()
            while not self.release.is_set():
                try:
                    latest = await client.recv(0.05)
                except TimeoutError:
                    pass
            await client.ack(latest, names=SDS_NAMES)
            self.released.set()
            while not self.stop_event.is_set():
                try:
                    await client.ack(await client.recv(0.2), names=SDS_NAMES)
                except TimeoutError:
                    pass


def fleet_has_acked_secrets(server: EmbeddedEtcd, node_id: str) -> bool:
    async def read() -> bool:
        kv = EtcdKV([server.endpoint], tls=server.tls)
        try:
            got = await kv.range(Keys().fleet)
            return any(r.node_id == node_id and SECRET in r.acked
                       for item in got.kvs for r in decode(item.value))
        finally:
            await kv.close()
    return asyncio.run(read())


def audit_actions(serve: ServeProcess) -> list[str]:
    result = cli(["audit", "-o", "json"], server=serve.admin)
    assert result.code == 0, result.err
    return [entry["action"] for entry in json.loads(result.out)]


def test_old_ca_clients_are_accepted_until_every_proxy_acked_the_new_certificates(
    tmp_path: Path, etcd: EmbeddedEtcd,  # noqa: F811 (fixture)
    upstream_factory: Callable[..., Upstream], envoy_factory: Callable[..., Envoy],
) -> None:
    serve = ServeProcess(tmp_path / "cp", etcd=etcd).start()
    laggard = Laggard(serve.xds)
    try:
        upstream = upstream_factory("v1")
        port = free_port()
        applied = cli(["apply", "-f", "-"], server=serve.admin,
                      stdin=mtls_config_yaml(port=port, upstream_port=upstream.port))
        assert applied.code == 0, applied.err
        envoy_factory(serve, "edge-1", "edge")
        old_ca = our_ca(etcd, serve.data_dir)
        old_client = Client(old_ca, "client-old", tmp_path)
        wait_for_sync(lambda: old_client.status(port) == 200, timeout=FIRST_CONFIG_S,
                      message="mTLS with a client certificate of the first CA")
        laggard.start()
        assert laggard.first_acked.wait(FIRST_CONFIG_S), laggard.error
        wait_for_sync(lambda: fleet_has_acked_secrets(etcd, "laggard-1"), timeout=10,
                      message="the laggard's ACK is in the fleet report")

        rotated = cli(["cert", "rotate", "--ca"], server=serve.admin)
        assert rotated.code == 0, rotated.err
        assert f"ca rotated: serial {old_ca.serial} -> " in rotated.out, rotated.out
        new_ca = our_ca(etcd, serve.data_dir, suffix=b"-next")
        assert new_ca.serial != old_ca.serial
        new_client = Client(new_ca, "client-new", tmp_path)

        # Step 1: both CAs trusted; the old one still issues while the laggard lags.
        wait_for_sync(lambda: new_client.status(port) == 200, timeout=5,
                      message="a client of the new CA is accepted")
        assert old_client.status(port) == 200, "the old CA is still trusted"
        assert old_client.server_issuer(port) == key_id(old_ca)
        actions = audit_actions(serve)
        assert "ca/rotate" in actions and "ca/promote" not in actions, actions

        # The laggard ACKs the bundle: the new CA issues; then it ACKs those too.
        laggard.release.set()
        assert laggard.released.wait(10), laggard.error
        wait_for_sync(lambda: old_client.server_issuer(port) == key_id(new_ca), timeout=10,
                      message="Envoy serves a certificate of the new CA")
        wait_for_sync(lambda: "ca/retire" in audit_actions(serve), timeout=10,
                      message="the old CA is retired once every proxy ACKed")
        wait_for_sync(lambda: old_client.status(port) == 0, timeout=5,
                      message="a client of the old CA is refused")
        assert new_client.status(port) == 200
        actions = audit_actions(serve)
        assert actions.index("ca/rotate") < actions.index("ca/promote") \
            < actions.index("ca/retire")
    finally:
        laggard.stop_event.set()
        laggard.release.set()
        if laggard.is_alive():
            laggard.join(5)
        serve.stop()
