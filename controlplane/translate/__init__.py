"""translate: desired state (+ rollout traffic policies) → Envoy v3 resources for one proxy group.

Pure: no I/O, no clock, no randomness. The same input gives equal resources, sorted
by name, that serialize to the same bytes (`SerializeToString(deterministic=True)`).

    translate(state, group=G, traffic={upstream: TrafficPolicy})
      ├── listener.py  Listener whose spec.group == G    → Listener (HCM, RDS over ADS)
      ├── route.py     Route on those listeners          → RouteConfiguration per listener
      ├── cluster.py   every version of each routed-to Upstream → Cluster (EDS over ADS)
      └── endpoint.py  the same versions                 → ClusterLoadAssignment
    names.py: cluster_name(upstream, version) == "upstream|version", and its inverse.

A group whose ProxyGroup says `edge: true` also gets Envoy's edge-proxy hardening in its
listeners and clusters (see `listener.py`); its bootstrap (`bootstrap.py`) adds the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from controlplane.errors import TranslationError
from controlplane.model import DesiredState, Upstream
from controlplane.model.traffic import TrafficPolicy
from controlplane.translate.cluster import build_clusters
from controlplane.translate.endpoint import build_endpoints
from controlplane.translate.listener import address_problems, build_listeners
from controlplane.translate.names import cluster_name, parse_cluster_name
from controlplane.translate.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    ResourceSet,
)
from controlplane.translate.route import (
    build_route_configurations,
    policy_problems,
    referenced_clusters,
)

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "LISTENER_TYPE",
    "ROUTE_TYPE",
    "SECRET_TYPE",
    "ResourceSet",
    "cluster_name",
    "dangling_clusters",
    "parse_cluster_name",
    "translate",
]

_NO_TRAFFIC: Mapping[str, TrafficPolicy] = MappingProxyType({})


def translate(
    state: DesiredState,
    *,
    group: str,
    traffic: Mapping[str, TrafficPolicy] = _NO_TRAFFIC,
) -> ResourceSet:
    """The Envoy resources proxy group `group` gets.

    Args:
        state: the desired state (normally `check()`ed; translate re-checks what would
            otherwise reach Envoy broken).
        group: the proxy group (Envoy node.cluster).
        traffic: rollout traffic policies by upstream name; an upstream without one
            sends all traffic to its `spec.active` version.

    Returns:
        Listeners of the group, one RouteConfiguration per listener, and a cluster plus
        load assignment for every version of every upstream the group's routes use.
        A group with no listeners gets an empty set.

    Errors:
        TranslationError: every problem found, at once: a route to a missing upstream,
            a bad traffic policy, a route naming a cluster the set does not carry
            (Envoy would accept it and answer 503), two listeners on one address.
    """
    profile = state.proxy_groups.get(group)
    edge = profile is not None and profile.spec.edge
    listeners = [lst for lst in state.listeners.values() if lst.spec.group == group]
    names = {lst.name for lst in listeners}
    routes = [r for r in state.routes.values() if r.spec.listener in names]
    upstreams: dict[str, Upstream] = {
        r.spec.upstream: state.upstreams[r.spec.upstream]
        for r in sorted(routes, key=lambda r: r.spec.upstream)
        if r.spec.upstream in state.upstreams
    }

    problems = address_problems(listeners)
    problems += policy_problems(traffic, upstreams)
    route_configs = build_route_configurations(
        listeners, routes, state.upstreams, traffic, problems
    )
    resources = ResourceSet.of(
        listeners=build_listeners(listeners, edge=edge),
        routes=route_configs,
        clusters=build_clusters(upstreams.values(), edge=edge),
        endpoints=build_endpoints(upstreams.values(), traffic),
    )
    problems += dangling_clusters(resources)
    if problems:
        raise TranslationError(f"cannot translate group {group!r}: " + "; ".join(problems))
    return resources


def dangling_clusters(resources: ResourceSet) -> list[str]:
    """Routes that send traffic to a cluster `resources` does not carry, one line each."""
    known = {c.name for c in resources.clusters}
    return [
        f"RouteConfiguration/{config.name}: route {route!r} names cluster {cluster!r}, "
        "which the group does not get"
        for config in resources.routes
        for route, cluster in referenced_clusters(config)
        if cluster not in known
    ]
