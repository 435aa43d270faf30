"""Who a stream comes from, for the per-peer stream cap: one host must not take every
slot of the global cap (`server.MAX_STREAMS`) and lock the real proxies out.

A peer is the client certificate's identity under mTLS (a hash of the certificate: one
proxy's credential, wherever it connects from), else the source address. Plaintext from
loopback is not capped: anyone there is on this host already, and the benchmarks connect
thousands of simulated proxies from 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

import grpc

MAX_STREAMS_PER_PEER = 1_000
"""Default cap on streams one peer holds open at once."""


def peer_key(context: grpc.aio.ServicerContext[Any, Any], *, exempt_loopback: bool = True
             ) -> str | None:
    """The peer a stream counts against; None: not capped (plaintext from loopback, or a
    unix socket, when `exempt_loopback`)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    if pems:
        return "cert:" + hashlib.sha256(pems[0]).hexdigest()
    peer = context.peer() or ""
    family, _, rest = peer.partition(":")
    if family == "unix":
        return None if exempt_loopback else peer
    host = rest.rsplit(":", 1)[0].strip("[]") if family in ("ipv4", "ipv6") else peer
    if exempt_loopback:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return f"addr:{host}"
        mapped = getattr(address, "ipv4_mapped", None)
        if (mapped or address).is_loopback:
            return None
    return f"addr:{host}"


def any_peer_key(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """`peer_key` with loopback capped too (tests, where every client is on 127.0.0.1)."""
    return peer_key(context, exempt_loopback=False)
