"""The output of translate: one immutable, sorted set of Envoy resources per proxy group."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf.message import Message

from controlplane.contract import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)


def _by_name(messages: Iterable[Any], attr: str = "name") -> tuple[Any, ...]:
    return tuple(sorted(messages, key=lambda m: str(getattr(m, attr))))


@dataclass(frozen=True)
class ResourceSet:
    """Everything one proxy group gets, each tuple sorted by resource name.

    Build it with `ResourceSet.of(...)`, which sorts; the same desired state always
    gives equal sets, and equal sets serialize to the same bytes.
    """

    clusters: tuple[Cluster, ...] = ()
    endpoints: tuple[ClusterLoadAssignment, ...] = ()
    listeners: tuple[Listener, ...] = ()
    routes: tuple[RouteConfiguration, ...] = ()
    secrets: tuple[Secret, ...] = ()

    @classmethod
    def of(
        cls,
        *,
        clusters: Iterable[Cluster] = (),
        endpoints: Iterable[ClusterLoadAssignment] = (),
        listeners: Iterable[Listener] = (),
        routes: Iterable[RouteConfiguration] = (),
        secrets: Iterable[Secret] = (),
    ) -> ResourceSet:
        """A set with each kind sorted by its xDS resource name."""
        return cls(
            clusters=_by_name(clusters),
            endpoints=_by_name(endpoints, "cluster_name"),
            listeners=_by_name(listeners),
            routes=_by_name(routes),
            secrets=_by_name(secrets),
        )

    def by_type_url(self) -> dict[str, list[Message]]:
        """{v3 type URL: resources}, every one of the five types present (maybe empty)."""
        return {
            CLUSTER_TYPE: list(self.clusters),
            ENDPOINT_TYPE: list(self.endpoints),
            LISTENER_TYPE: list(self.listeners),
            ROUTE_TYPE: list(self.routes),
            SECRET_TYPE: list(self.secrets),
        }

    def is_empty(self) -> bool:
        """Whether the group gets no resource at all."""
        return not any(self.by_type_url().values())
