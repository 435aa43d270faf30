"""Names that several layers must spell the same way, defined once.

Each name here is part of a contract with something outside one module: Envoy (xDS type
URLs), etcd's stored rollout statuses and the CLI (phases), the admin API's clients
(trailing-metadata keys). A layer that needs one imports it from here instead of
repeating the literal, so the spellings cannot drift apart. Standard library only: the
CLI imports this on every command.
"""

from __future__ import annotations

from enum import StrEnum

# ---- Envoy xDS v3 type URLs (what a DiscoveryRequest's `type_url` says) --------------

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

DISCOVERY_SERVICE: dict[str, str] = {
    CLUSTER_TYPE: "CDS",
    ENDPOINT_TYPE: "EDS",
    LISTENER_TYPE: "LDS",
    ROUTE_TYPE: "RDS",
    SECRET_TYPE: "SDS",
}
"""Envoy's short name for the discovery service of each type (for people: `get proxies`)."""


# ---- Rollout phases (stored in etcd as these strings; read by the CLI and the demo) -----


class Phase(StrEnum):
    """Where a rollout is; the values are what etcd stores and `rollout status` prints."""

    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


ACTIVE_PHASES = frozenset({Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING,
                           Phase.ROLLING_BACK})
FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.ABORTED})
"""A rollout in one of these is over: `rollout status --watch` and the demo stop here."""


# ---- Admin API trailing metadata ---------------------------------------------------------

FIELD_ERRORS_KEY = "field-errors"
"""One entry per invalid field (`location: reason`), on an INVALID_ARGUMENT answer."""

ERROR_CLASS_KEY = "error-class"
"""The name of the `controlplane.errors` class the server raised (`StoreUnavailableError`),
so a client maps the failure by type, never by its message's text."""
