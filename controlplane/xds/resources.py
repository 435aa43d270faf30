"""The xDS resource types this server serves: type URLs, names, push order.

The type URLs themselves are spelled once, in `controlplane.contract`; here they get the
short names the xDS layer uses (`CLUSTER`, ...).

Only the five v3 types below carry resources. Any other type URL a client asks
for is answered as a type with no resources (see `sotw` and `delta`), so an
unexpected subscription never blocks a proxy's initialization.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from controlplane.contract import CLUSTER_TYPE as CLUSTER
from controlplane.contract import ENDPOINT_TYPE as ENDPOINT
from controlplane.contract import LISTENER_TYPE as LISTENER
from controlplane.contract import ROUTE_TYPE as ROUTE
from controlplane.contract import SECRET_TYPE as SECRET

__all__ = ["CLUSTER", "ENDPOINT", "KNOWN_TYPES", "LISTENER", "PUSH_ORDER", "ROUTE", "SECRET",
           "WILDCARD_TYPES", "matches_type", "push_rank", "resource_name", "short_kind",
           "type_url_of"]

PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
"""After a snapshot change, types are pushed in this order (make-before-break)."""

WILDCARD_TYPES: frozenset[str] = frozenset({CLUSTER, LISTENER})
"""Types whose SotW subscription with no names means "everything"."""

KNOWN_TYPES: frozenset[str] = frozenset(PUSH_ORDER)

_FULL_NAMES: dict[str, str] = {url: url.rsplit("/", 1)[1] for url in PUSH_ORDER}

_NAME_FIELD: dict[str, Callable[[Message], str]] = {
    CLUSTER: lambda m: str(m.name),
    ENDPOINT: lambda m: str(m.cluster_name),
    LISTENER: lambda m: str(m.name),
    ROUTE: lambda m: str(m.name),
    SECRET: lambda m: str(m.name),
}


def type_url_of(message: Message) -> str:
    """The type URL of a message, as it appears in a google.protobuf.Any."""
    return f"type.googleapis.com/{message.DESCRIPTOR.full_name}"


def resource_name(type_url: str, message: Message) -> str:
    """The xDS name of a resource: Cluster.name, ClusterLoadAssignment.cluster_name, ...

    Errors:
        KeyError: `type_url` is not one of the five served types.
    """
    return _NAME_FIELD[type_url](message)


def matches_type(type_url: str, message: Message) -> bool:
    """Whether `message` is the message type `type_url` names."""
    return bool(_FULL_NAMES.get(type_url) == message.DESCRIPTOR.full_name)


def push_rank(type_url: str) -> int:
    """Sort key giving PUSH_ORDER first, then any other type alphabetically after."""
    try:
        return PUSH_ORDER.index(type_url)
    except ValueError:
        return len(PUSH_ORDER)


def short_kind(type_url: str) -> str:
    """`Cluster` for the Cluster type URL: for logs."""
    return type_url.rsplit(".", 1)[-1]
