"""Who a proxy is, from its mTLS client certificate rather than the node it claims.

With `serve --tls-dir` the xDS port requires a client certificate signed by our CA;
the proxy's group is the `spiffe://<trust-domain>/group/<group>` URI SAN in it. A
node claiming another group gets its certificate's group's config, never the one
it asked for (and secrets follow the group, so it gets only its own). A certificate
for one node (`.../group/<group>/node/<node id>`, `cert issue --node-id`) is refused
for a stream claiming any other node id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container
from typing import Any

import grpc
from cryptography import x509
from envoy.config.core.v3 import base_pb2

from controlplane.errors import AuthenticationError
from controlplane.spiffe import GROUP_PREFIX as SPIFFE_PREFIX
from controlplane.spiffe import NODE_PART

log = logging.getLogger(__name__)


def group_of_certificate(pem: bytes, prefix: str = SPIFFE_PREFIX) -> str | None:
    """What follows `prefix` in a certificate's SPIFFE URI SAN (the group, and its
    node part if any, for the default prefix), or None."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(prefix) and uri[len(prefix):]:
            return uri[len(prefix):]
    return None


def certificate_identity(pem: bytes) -> tuple[str, str] | None:
    """(group, node id) a proxy certificate names (node id "" for a group-wide one)."""
    named = group_of_certificate(pem)
    if named is None:
        return None
    group, _, node_id = named.partition(NODE_PART)
    return (group, node_id) if group else None


def peer_certificate_group(
    node: base_pb2.Node, context: grpc.aio.ServicerContext[Any, Any]
) -> str:
    """A `GroupOf` for mTLS: the group comes from the peer's certificate.

    Errors:
        AuthenticationError: no client certificate, or one that names no group.
    """
    pems = context.auth_context().get("x509_pem_cert") or []
    named = certificate_identity(pems[0]) if pems else None
    if named is None:
        raise AuthenticationError(
            "the xDS client presented no certificate naming a proxy group "
            f"({SPIFFE_PREFIX}<group>); issue one with `controlplane cert issue`"
        )
    group, node_id = named
    if node_id and node.id != node_id:
        raise AuthenticationError(
            f"this client certificate is for node {node_id!r} of group {group!r}, not "
            f"for {node.id!r}: set the proxy's node id, or issue it a certificate with "
            "`controlplane cert issue --group G --node-id ID`")
    if node.cluster and node.cluster != group:
        log.warning("node %s claims group %r but its certificate says %r: serving %r",
                    node.id, node.cluster, group, group)
    return group


def certificate_serial(pem: bytes) -> str | None:
    """A certificate's serial as our CA writes it (lowercase hex), or None."""
    try:
        return f"{x509.load_pem_x509_certificate(pem).serial_number:x}"
    except ValueError:
        return None


def peer_node(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The node id the peer's client certificate is for; "" for none or a group-wide one."""
    pems = context.auth_context().get("x509_pem_cert") or []
    named = certificate_identity(pems[0]) if pems else None
    return named[1] if named else ""


def peer_serial(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The serial of the peer's client certificate; "" without one (plaintext)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    return (certificate_serial(pems[0]) or "") if pems else ""


GroupOfNode = Callable[[base_pb2.Node, "grpc.aio.ServicerContext[Any, Any]"], str]


def refusing_revoked(group_of: GroupOfNode, revoked: Container[str]) -> GroupOfNode:
    """`group_of`, but a stream whose client certificate was revoked is refused."""
    def checked(node: base_pb2.Node, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        serial = peer_serial(context)
        if serial and serial in revoked:
            raise AuthenticationError(
                f"this client certificate (serial {serial}) was revoked: issue a new one "
                "with `controlplane cert issue`")
        return group_of(node, context)
    return checked
