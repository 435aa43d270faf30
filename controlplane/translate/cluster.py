"""Upstream → Envoy Clusters: one EDS cluster per version.

Every version of a referenced upstream gets a cluster, not just the active one:
switching `spec.active` or moving a rollout's weight then only changes routes, and
the target cluster is already warm (endpoints known, health checked).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers as CircuitBreakersProto
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.cluster.v3.outlier_detection_pb2 import (
    OutlierDetection as OutlierDetectionProto,
)
from envoy.config.core.v3.base_pb2 import RoutingPriority
from envoy.config.core.v3.health_check_pb2 import HealthCheck as HealthCheckProto
from google.protobuf.wrappers_pb2 import UInt32Value

from controlplane.model import Credential, Upstream
from controlplane.model.resources import (
    CircuitBreakers,
    HealthCheck,
    OutlierDetection,
    UpstreamSpec,
    VersionSpec,
)
from controlplane.translate.common import ads, duration, pack
from controlplane.translate.names import cluster_name
from controlplane.translate.sds import (
    HTTP_PROTOCOL_OPTIONS,
    credential_protocol_options,
    upstream_tls,
)

_NO_CREDENTIALS: Mapping[str, Credential] = MappingProxyType({})

EDGE_BUFFER_LIMIT_BYTES = 32 * 1024
"""Per-connection buffer limit for edge proxies (Envoy's edge best practices: 32 KiB)."""


def build_clusters(
    upstreams: Iterable[Upstream],
    *,
    group: str = "",
    edge: bool = False,
    credentials: Mapping[str, Credential] = _NO_CREDENTIALS,
) -> list[Cluster]:
    """One cluster per version of each upstream, named `cluster_name(upstream, version)`.

    Args:
        upstreams: the upstreams the group's routes reference.
        group: the proxy group; a version with `tls` presents its certificate.
        edge: apply Envoy's edge-proxy buffer limits.
        credentials: Credentials by name; a version naming one injects it (sds.py).
    """
    # Every version of an upstream, and usually many upstreams, share the same
    # health check, outlier detection and circuit breakers: build those once per
    # distinct setting and copy them (a C-level copy, not a rebuild) into each cluster.
    shared: dict[_SharedKey, Cluster] = {}
    clusters: list[Cluster] = []
    for upstream in upstreams:
        spec = upstream.spec
        key = _shared_key(spec)
        base = shared.get(key)
        if base is None:
            base = shared[key] = _shared_settings(spec, edge=edge)
        clusters.extend(
            _version_cluster(base, upstream.name, version, spec.versions[version],
                             group=group, credentials=credentials)
            for version in sorted(spec.versions)
        )
    return clusters


_SharedKey = tuple[str, HealthCheck | None, OutlierDetection | None, CircuitBreakers | None]
"""The upstream settings `_shared_settings` reads (models are frozen, hence hashable)."""


def _shared_key(spec: UpstreamSpec) -> _SharedKey:
    return (spec.connect_timeout, spec.health_check, spec.outlier_detection,
            spec.circuit_breakers)


def _shared_settings(spec: UpstreamSpec, *, edge: bool) -> Cluster:
    """Everything of a version's cluster that does not depend on the version (no name)."""
    cluster = Cluster(
        type=Cluster.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(eds_config=ads()),
        connect_timeout=duration(spec.connect_timeout),
        lb_policy=Cluster.ROUND_ROBIN,
    )
    if spec.health_check is not None:
        cluster.health_checks.append(_health_check(spec.health_check))
        # EDS is the truth: an endpoint we remove (a rolling batch) leaves at once,
        # rather than staying for as long as it passes health checks.
        cluster.ignore_health_on_host_removal = True
    if spec.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(_outlier_detection(spec.outlier_detection))
    if spec.circuit_breakers is not None:
        cluster.circuit_breakers.CopyFrom(_circuit_breakers(spec.circuit_breakers))
    if edge:
        cluster.per_connection_buffer_limit_bytes.value = EDGE_BUFFER_LIMIT_BYTES
    return cluster


def _version_cluster(
    shared: Cluster,
    upstream: str,
    version: str,
    spec: VersionSpec,
    *,
    group: str,
    credentials: Mapping[str, Credential],
) -> Cluster:
    """A copy of `shared` named for `version`, with the version's credential and TLS."""
    cluster = Cluster()
    cluster.CopyFrom(shared)
    cluster.name = cluster_name(upstream, version)
    credential = spec.credential
    if credential is not None and credential in credentials:
        # Envoy's credential_injector as an upstream filter, value over SDS (sds.py).
        # A missing Credential is a state problem (DesiredState.problems) and, if it
        # got here anyway, a dangling-secret problem of translate.
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(
            pack(credential_protocol_options(credentials[credential])))
    if spec.tls is not None:
        # Upstream (m)TLS: certificate and CA by SDS name only (sds.py). Health checks
        # use the same transport socket.
        cluster.transport_socket.CopyFrom(upstream_tls(group, spec.tls))
    return cluster


def _health_check(spec: HealthCheck) -> HealthCheckProto:
    # Envoy checks a cluster with no traffic only every 60 s by default; a blue-green
    # preview at 0% is such a cluster, and its switch waits on these checks.
    return HealthCheckProto(
        timeout=duration(spec.timeout),
        interval=duration(spec.interval),
        no_traffic_interval=duration(spec.interval),
        unhealthy_threshold=UInt32Value(value=spec.unhealthy_threshold),
        healthy_threshold=UInt32Value(value=spec.healthy_threshold),
        http_health_check=HealthCheckProto.HttpHealthCheck(path=spec.path),
    )


def _outlier_detection(spec: OutlierDetection) -> OutlierDetectionProto:
    return OutlierDetectionProto(
        consecutive_5xx=UInt32Value(value=spec.consecutive5xx),
        interval=duration(spec.interval),
        base_ejection_time=duration(spec.base_ejection_time),
        max_ejection_percent=UInt32Value(value=spec.max_ejection_percent),
        enforcing_consecutive_5xx=UInt32Value(value=100),
    )


def _circuit_breakers(spec: CircuitBreakers) -> CircuitBreakersProto:
    return CircuitBreakersProto(
        thresholds=[
            CircuitBreakersProto.Thresholds(
                priority=RoutingPriority.DEFAULT,
                max_connections=UInt32Value(value=spec.max_connections),
                max_pending_requests=UInt32Value(value=spec.max_pending_requests),
                max_requests=UInt32Value(value=spec.max_requests),
                max_retries=UInt32Value(value=spec.max_retries),
            )
        ]
    )
