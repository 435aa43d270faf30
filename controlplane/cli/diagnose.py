"""What is behind `--server` when it does not answer as the admin API.

A gRPC server that says UNIMPLEMENTED to an admin call is most often the xDS port
(`serve --xds-addr`, 18000 by default) given where the admin port belongs. Two cheap
probes tell the cases apart, so the error names the cause instead of "unimplemented".
A TLS server the CLI refused (UNAVAILABLE) gets one handshake to say whether its
certificate is the cause.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import grpc

from controlplane.api import admin_pb2
from controlplane.cli.client import DEFAULT_SERVER, Connection
from controlplane.errors import ControlPlaneError, FieldError, InvalidInputError
from controlplane.spiffe import SERVER_ID

PROBE_TIMEOUT_S = 2.0
_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def _has(call: Callable[[], object]) -> bool:
    """Whether the server has the method `call` uses: any answer but UNIMPLEMENTED,
    a refusal included."""
    try:
        call()
    except grpc.RpcError as exc:
        return bool(exc.code() != grpc.StatusCode.UNIMPLEMENTED)
    return True


def _admin_get(conn: Connection) -> object:
    return conn.stub().Get(admin_pb2.GetRequest(kind="upstreams"), metadata=conn.metadata(),
                           timeout=PROBE_TIMEOUT_S)


def _ads_open(conn: Connection) -> object:
    """Opens an ADS stream and half-closes it at once: an xDS server ends it, any other
    server says UNIMPLEMENTED."""
    ads = conn.channel().stream_stream(_ADS)
    return list(ads(iter(()), timeout=PROBE_TIMEOUT_S))


def unimplemented(conn: Connection, details: str) -> ControlPlaneError:
    """The error for an admin call `conn.server` answered UNIMPLEMENTED.

    Returns:
        InvalidInputError (bad usage, exit 2) when `--server` is not the admin API (the
        xDS port, or some other gRPC server); a ControlPlaneError (exit 1) when it is the
        admin API of an older controlplane that lacks this one call.
    """
    if _has(lambda: _admin_get(conn)):
        return ControlPlaneError(
            f"{conn.server} runs the admin API but not this call ({details}): the server "
            "is an older controlplane than this command; upgrade it")
    where = ("is an xDS port, not the admin API" if _has(lambda: _ads_open(conn))
             else "answers gRPC but is not the controlplane admin API")
    return InvalidInputError([FieldError(
        "--server", f"{conn.server} {where} (default {DEFAULT_SERVER}; serve --admin-addr)")])


def server_identity(conn: Connection) -> ControlPlaneError | None:
    """Why a TLS connection to `conn.server` failed, if its certificate is the cause: one
    handshake with the client certificate of `conn.tls_dir`, then its SPIFFE URI SANs.

    Returns:
        A ControlPlaneError (exit 1) when the server's certificate does not chain to
        ca.crt or does not name `spiffe://controlplane/server` (a proxy's or another
        certificate of our CA posing as the control plane); None when it is the
        control plane's (the failure lies elsewhere) or the server cannot be reached.
    """
    import socket
    import ssl

    address = _host_port(conn.server)
    if address is None or conn.tls_dir is None:
        return None
    try:
        context = ssl.create_default_context(cafile=os.path.join(conn.tls_dir, "ca.crt"))
        context.check_hostname = False  # the SPIFFE ID is what identifies the server
        context.load_cert_chain(os.path.join(conn.tls_dir, "client.crt"),
                                os.path.join(conn.tls_dir, "client.key"))
        with socket.create_connection(address, timeout=PROBE_TIMEOUT_S) as raw, \
                context.wrap_socket(raw) as tls:
            cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return ControlPlaneError(
            f"{conn.server} is not the control plane: its certificate does not verify "
            f"against {conn.tls_dir}/ca.crt ({exc.verify_message})")
    except OSError:
        return None
    sans = cert.get("subjectAltName", ())
    uris = [str(san[1]) for san in sans if isinstance(san, tuple) and san[0] == "URI"]
    if SERVER_ID in uris:
        return None
    named = ", ".join(uris) or "no SPIFFE ID"
    return ControlPlaneError(
        f"{conn.server} is not the control plane: its certificate names {named}, not "
        f"{SERVER_ID} (a proxy's or user's certificate posing as the server?); refused "
        "before sending anything. Check --server; a serve from before pinned identities "
        "re-issues its certificate when restarted")


def _host_port(target: str) -> tuple[str, int] | None:
    """(host, port) of a `HOST:PORT`, `[V6]:PORT` or `dns:///HOST:PORT` target; None for
    other gRPC targets (unix sockets)."""
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        target = target.removeprefix(scheme)
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or "/" in target:
        return None
    return host.strip("[]"), int(port)
