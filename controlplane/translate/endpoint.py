"""Upstream versions → ClusterLoadAssignments (EDS), one per cluster `cluster.py` emits.

A version's IP endpoints are sent as written; its DNS names and leased keys
(`endpointsFrom`) as the addresses stored for them (`discovered`, read from etcd:
translate resolves and watches nothing itself).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from controlplane.model import Upstream
from controlplane.model.endpoints import DiscoveredMap, is_ip_endpoint
from controlplane.model.traffic import TrafficPolicy
from controlplane.translate.common import split_endpoint
from controlplane.translate.names import cluster_name

NOTHING_DISCOVERED: DiscoveredMap = MappingProxyType({})


def build_endpoints(
    upstreams: Iterable[Upstream], traffic: Mapping[str, TrafficPolicy],
    discovered: DiscoveredMap = NOTHING_DISCOVERED,
) -> list[ClusterLoadAssignment]:
    """One assignment per version of each upstream, endpoints in the order the user wrote
    them (a name: its discovered addresses, sorted).

    Errors:
        TranslationError: an endpoint is not IP:PORT.
    """
    return [
        build_load_assignment(upstream, version, traffic.get(upstream.name), discovered)
        for upstream in upstreams
        for version in sorted(upstream.spec.versions)
    ]


def rolling_endpoints(old: Sequence[str], new: Sequence[str], percent: float) -> list[str]:
    """`from` endpoints replaced by `to` endpoints, `percent` of each at a time.

    New ones come in before old ones go (rounding up new, down old), like a
    Deployment's surge: at 10% of 2 → 3 endpoints, never fewer than before.
    """
    keep_old = len(old) - math.floor(len(old) * percent / 100)
    add_new = math.ceil(len(new) * percent / 100)
    return [*old[:keep_old], *new[:add_new]]


def addresses_of(upstream: Upstream, version: str, discovered: DiscoveredMap) -> list[str]:
    """The `IP:PORT`s a version stands for (a name never resolved: none; its leased
    keys: those stored)."""
    spec = upstream.spec.versions[version]
    found = discovered.get((upstream.name, version), ())
    if not found:  # the IPs as written (a large config has 100k: no objects per endpoint)
        return [text for text in spec.endpoints if is_ip_endpoint(text)]
    return [d.address for d in spec.addresses(found)]


def build_load_assignment(
    upstream: Upstream, version: str, policy: TrafficPolicy | None = None,
    discovered: DiscoveredMap = NOTHING_DISCOVERED,
) -> ClusterLoadAssignment:
    """The endpoints of one version, in a single locality (we know no zones).

    Errors:
        TranslationError: an endpoint is not IP:PORT.
    """
    endpoints = addresses_of(upstream, version, discovered)
    if policy is not None and policy.rolling and version == policy.from_version:
        endpoints = rolling_endpoints(
            endpoints, addresses_of(upstream, policy.to_version, discovered), policy.weight
        )
    assignment = ClusterLoadAssignment(cluster_name=cluster_name(upstream.name, version))
    # Filled in place: nested constructors would copy each sub-message once per level,
    # and a large upstream has thousands of endpoints.
    add_endpoint = assignment.endpoints.add().lb_endpoints.add
    for text in endpoints:
        host, port = split_endpoint(text)
        address = add_endpoint().endpoint.address.socket_address
        address.address = host
        address.port_value = port
    return assignment
