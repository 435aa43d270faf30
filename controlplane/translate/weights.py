"""What a translated group's routes do with each upstream's traffic: its split by version,
read back from the RouteConfigurations (and, for a cluster whose endpoints belong to
several versions, a rolling update's, from its ClusterLoadAssignment), so what is shown
is what Envoy is sent."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.route.v3.route_components_pb2 import RouteAction

from controlplane.errors import TranslationError
from controlplane.translate.names import parse_cluster_name
from controlplane.translate.resources import ResourceSet

Weights = Mapping[str, float]
"""Version → percent of the traffic a route sends it."""
Owners = Mapping[str, Mapping[tuple[str, int], str]]
"""Upstream → endpoint (host, port) → the version that lists it."""

_NO_OWNERS: Owners = MappingProxyType({})


def upstream_weights(resources: ResourceSet, owners: Owners = _NO_OWNERS
                     ) -> Mapping[str, list[Weights]]:
    """Upstream → each distinct split the group's routes give it (normally one).

    Routes that match on headers (a rollout's A/B pin to `to`) are left out: they carry
    only the requests they match, not a share of the traffic. With `owners`, a cluster
    whose endpoints belong to several versions shares its part among them by endpoint
    count (round robin over equal endpoints).
    """
    assignments = {a.cluster_name: a for a in resources.endpoints}
    out: dict[str, list[Weights]] = {}
    for config in resources.routes:
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                if route.match.headers:
                    continue
                split = _split_of(route.route)
                if split is None:
                    continue
                upstream, parts = split
                weights: dict[str, float] = {}
                for cluster, version, percent in parts:
                    mix = _mix(assignments.get(cluster), owners.get(upstream, {})) or {
                        version: 1.0}
                    for owner, share in mix.items():
                        weights[owner] = round(weights.get(owner, 0.0) + percent * share, 2)
                seen = out.setdefault(upstream, [])
                if weights not in seen:
                    seen.append(MappingProxyType(weights))
    return out


def _split_of(action: RouteAction) -> tuple[str, list[tuple[str, str, float]]] | None:
    """(upstream, [(cluster, version, percent)]) of one route's action; None if it names
    no cluster of ours (one route sends to one upstream)."""
    try:
        if action.cluster:
            upstream, version = parse_cluster_name(action.cluster)
            return upstream, [(action.cluster, version, 100.0)]
        if not action.HasField("weighted_clusters"):
            return None
        named = [(c.name, parse_cluster_name(c.name), c.weight.value)
                 for c in action.weighted_clusters.clusters]
    except TranslationError:
        return None
    total = sum(w for _, _, w in named)
    if not named or not total:
        return None
    return named[0][1][0], [(name, version, weight * 100 / total)
                            for name, (_, version), weight in named]


def _mix(assignment: ClusterLoadAssignment | None, owners: Mapping[tuple[str, int], str]
         ) -> dict[str, float]:
    """Version → share of one cluster's endpoints ({} when unknown)."""
    if assignment is None or not owners:
        return {}
    counts: dict[str, int] = {}
    for locality in assignment.endpoints:
        for lb in locality.lb_endpoints:
            address = lb.endpoint.address.socket_address
            owner = owners.get((address.address, address.port_value))
            if owner is None:
                return {}
            counts[owner] = counts.get(owner, 0) + 1
    total = sum(counts.values())
    return {v: n / total for v, n in counts.items()} if total else {}
