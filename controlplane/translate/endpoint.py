"""Upstream versions → ClusterLoadAssignments (EDS), one per cluster `cluster.py` emits."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from controlplane.model import Upstream
from controlplane.translate.common import socket_address, split_endpoint
from controlplane.translate.names import cluster_name


def build_endpoints(upstreams: Iterable[Upstream]) -> list[ClusterLoadAssignment]:
    """One assignment per version of each upstream, endpoints in the order the user wrote them.

    Errors:
        TranslationError: an endpoint is not IP:PORT.
    """
    return [
        build_load_assignment(upstream, version)
        for upstream in upstreams
        for version in sorted(upstream.spec.versions)
    ]


def build_load_assignment(upstream: Upstream, version: str) -> ClusterLoadAssignment:
    """The endpoints of one version, in a single locality (we know no zones).

    Errors:
        TranslationError: an endpoint is not IP:PORT.
    """
    lb_endpoints = []
    for text in upstream.spec.versions[version].endpoints:
        host, port = split_endpoint(text)
        lb_endpoints.append(LbEndpoint(endpoint=Endpoint(address=socket_address(host, port))))
    return ClusterLoadAssignment(
        cluster_name=cluster_name(upstream.name, version),
        endpoints=[LocalityLbEndpoints(lb_endpoints=lb_endpoints)],
    )
