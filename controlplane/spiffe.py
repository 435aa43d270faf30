"""The SPIFFE identities our CA writes into certificates, and who may hold which.

    spiffe://controlplane/server                     the control plane (xDS and admin ports)
    spiffe://controlplane/group/<group>              every proxy of a group
    spiffe://controlplane/group/<group>/node/<id>    one proxy of a group
    spiffe://controlplane/user/<name>/<role>         an admin API user

Every layer that issues, pins or checks one of these names imports it from here, so the
issuer and the verifiers cannot drift apart.
"""

from __future__ import annotations

TRUST_DOMAIN = "controlplane"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/server"
"""The control plane's own identity: Envoy bootstraps and the CLI accept no other server."""
SERVER_NAME = "server.controlplane"
"""A DNS name only the server certificate carries: what a gRPC client that can only check
host names (the CLI) verifies instead of the URI. No group or user certificate can carry
it: their names are single labels (RFC 1123), `<group>` and `<group>.controlplane.local`."""
GROUP_PREFIX = f"spiffe://{TRUST_DOMAIN}/group/"
NODE_PART = "/node/"
USER_PREFIX = f"spiffe://{TRUST_DOMAIN}/user/"


def group_id(group: str, node_id: str = "") -> str:
    """`spiffe://controlplane/group/<group>`: who a certificate's holder is; with
    `node_id`, `.../group/<group>/node/<node_id>`: one proxy of the group."""
    base = f"{GROUP_PREFIX}{group}"
    return f"{base}{NODE_PART}{node_id}" if node_id else base


def user_id(name: str, role: str) -> str:
    """`spiffe://controlplane/user/<name>/<role>`: an admin API caller and its role (the
    CA's signature vouches for both)."""
    return f"{USER_PREFIX}{name}/{role}"
