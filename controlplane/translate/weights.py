"""What a translated group's routes do with each upstream's traffic: its split by version,
read back from the RouteConfigurations, so what is shown is what Envoy is sent."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from envoy.config.route.v3.route_components_pb2 import RouteAction

from controlplane.errors import TranslationError
from controlplane.translate.names import parse_cluster_name
from controlplane.translate.resources import ResourceSet
from controlplane.translate.route import TOTAL_WEIGHT

Weights = Mapping[str, float]
"""Version → percent of the traffic a route sends it."""


def split_of(action: RouteAction) -> tuple[str, Weights] | None:
    """(upstream, version → percent) of one route's action; None if it names no cluster
    of ours (one route sends to one upstream)."""
    try:
        if action.cluster:
            upstream, version = parse_cluster_name(action.cluster)
            return upstream, MappingProxyType({version: 100.0})
        if not action.HasField("weighted_clusters"):
            return None
        clusters = action.weighted_clusters.clusters
        named = [(parse_cluster_name(c.name), c.weight.value) for c in clusters]
    except TranslationError:
        return None
    total = sum(w for _, w in named) or TOTAL_WEIGHT
    weights: dict[str, float] = {}
    for (_, version), weight in named:
        weights[version] = weights.get(version, 0.0) + round(weight * 100 / total, 2)
    return named[0][0][0], MappingProxyType(weights)


def upstream_weights(resources: ResourceSet) -> Mapping[str, list[Weights]]:
    """Upstream → each distinct split the group's routes give it (normally one). Routes
    that match on headers (a rollout's A/B pin to `to`) are left out: they carry only
    the requests they match, not a share of the traffic."""
    out: dict[str, list[Weights]] = {}
    for config in resources.routes:
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                if route.match.headers:
                    continue
                split = split_of(route.route)
                if split is None:
                    continue
                upstream, weights = split
                seen = out.setdefault(upstream, [])
                if weights not in seen:
                    seen.append(weights)
    return out
