"""Which peer a stream counts against for the per-peer stream cap."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.xds.peers import any_peer_key, peer_key


class _Context:
    """What `peer_key` reads of a grpc.aio context: its peer and auth context."""

    def __init__(self, peer: str, pem: bytes | None = None) -> None:
        self._peer, self._pem = peer, pem

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}


def ctx(peer: str, pem: bytes | None = None) -> Any:
    return _Context(peer, pem)


@pytest.mark.parametrize("peer", ["ipv4:127.0.0.1:5000", "ipv6:[::1]:5000",
                                  "ipv6:[::ffff:127.0.0.1]:5000", "unix:/run/x.sock"])
def test_plaintext_loopback_is_not_capped(peer: str) -> None:
    assert peer_key(ctx(peer)) is None
    assert any_peer_key(ctx(peer)) is not None


def test_a_source_address_is_a_peer_whatever_its_port() -> None:
    assert peer_key(ctx("ipv4:10.0.0.7:5000")) == peer_key(ctx("ipv4:10.0.0.7:6000"))
    assert peer_key(ctx("ipv4:10.0.0.7:5000")) != peer_key(ctx("ipv4:10.0.0.8:5000"))
    assert peer_key(ctx("ipv6:[2001:db8::1]:5000")) == "addr:2001:db8::1"


def test_a_client_certificate_is_the_peer_even_on_loopback() -> None:
    a = peer_key(ctx("ipv4:127.0.0.1:5000", b"cert-a"))
    assert a is not None and a.startswith("cert:")
    assert a == peer_key(ctx("ipv4:10.0.0.9:1", b"cert-a"))
    assert a != peer_key(ctx("ipv4:127.0.0.1:5000", b"cert-b"))
