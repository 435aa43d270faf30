"""translate: desired state (+ rollout traffic policies) → Envoy v3 resources for one proxy group.

Pure: no I/O, no clock, no randomness. The same input gives equal resources, sorted
by name, that serialize to the same bytes (`SerializeToString(deterministic=True)`).

    translate(state, group=G, traffic={upstream: TrafficPolicy})
      ├── listener.py  Listener whose spec.group == G    → Listener (HCM, RDS over ADS)
      ├── route.py     Route on those listeners          → RouteConfiguration per listener
      ├── cluster.py   every version of each routed-to Upstream → Cluster (EDS over ADS)
      ├── endpoint.py  the same versions                 → ClusterLoadAssignment
      └── sds.py       TLS listeners, versions' credentials and mTLS → Secret (from
                       `secrets`, the key material the caller passes in: translate reads
                       no disk or etcd)
    names.py: cluster_name(upstream, version) == "upstream|version", and its inverse.

A group whose ProxyGroup says `edge: true` also gets Envoy's edge-proxy hardening in its
listeners and clusters (see `listener.py`); its bootstrap (`bootstrap.py`) adds the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from controlplane.contract import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)
from controlplane.errors import TranslationError
from controlplane.model import DesiredState, Upstream
from controlplane.model.traffic import TrafficPolicy
from controlplane.translate.cluster import build_clusters
from controlplane.translate.endpoint import build_endpoints
from controlplane.translate.listener import address_problems, build_listeners
from controlplane.translate.names import cluster_name, parse_cluster_name
from controlplane.translate.resources import ResourceSet
from controlplane.translate.route import (
    build_route_configurations,
    policy_problems,
    referenced_clusters,
)
from controlplane.translate.sds import (
    NO_MATERIAL,
    GroupCertificate,
    SecretMaterial,
    build_secrets,
    placeholder_material,
    tls_problems,
)

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "LISTENER_TYPE",
    "ROUTE_TYPE",
    "SECRET_TYPE",
    "GroupCertificate",
    "ResourceSet",
    "SecretMaterial",
    "cluster_name",
    "dangling_clusters",
    "parse_cluster_name",
    "placeholder_material",
    "translate",
]

_NO_TRAFFIC: Mapping[str, TrafficPolicy] = MappingProxyType({})
_NO_RETIRED: Mapping[str, frozenset[str]] = MappingProxyType({})


def translate(
    state: DesiredState,
    *,
    group: str,
    traffic: Mapping[str, TrafficPolicy] = _NO_TRAFFIC,
    secrets: SecretMaterial = NO_MATERIAL,
    retired: Mapping[str, frozenset[str]] = _NO_RETIRED,
) -> ResourceSet:
    """The Envoy resources proxy group `group` gets.

    Args:
        state: the desired state (normally `check()`ed; translate re-checks what would
            otherwise reach Envoy broken).
        group: the proxy group (Envoy node.cluster).
        traffic: rollout traffic policies by upstream name; an upstream without one
            sends all traffic to its `spec.active` version.
        secrets: certificates and credential values; the group gets only those its
            listeners and clusters name.
        retired: upstream name → versions no longer configured at all (no cluster, no
            credential): a finished rollout's `from` once its rollback window ended.

    Returns:
        Listeners of the group, one RouteConfiguration per listener, and a cluster plus
        load assignment for every version of every upstream the group's routes use.
        A group with no listeners gets an empty set.

    Errors:
        TranslationError: every problem found, at once: a route to a missing upstream,
            a bad traffic policy, a route naming a cluster the set does not carry
            (Envoy would accept it and answer 503), two listeners on one address,
            a secret the group needs that `secrets` lacks.
    """
    profile = state.proxy_groups.get(group)
    edge = profile is not None and profile.spec.edge
    listeners = [lst for lst in state.listeners.values() if lst.spec.group == group]
    names = {lst.name for lst in listeners}
    routes = [r for r in state.routes.values() if r.spec.listener in names]
    upstreams: dict[str, Upstream] = {
        r.spec.upstream: _without(state.upstreams[r.spec.upstream],
                                  retired.get(r.spec.upstream, frozenset()))
        for r in sorted(routes, key=lambda r: r.spec.upstream)
        if r.spec.upstream in state.upstreams
    }

    problems = address_problems(listeners)
    problems += policy_problems(traffic, upstreams)
    problems += tls_problems((lst.name, lst.spec.tls) for lst in listeners if lst.spec.tls)
    credentials = sorted({
        spec.credential for ups in upstreams.values() for spec in ups.spec.versions.values()
        if spec.credential is not None and spec.credential in state.credentials
    })
    upstream_tls = [spec.tls for ups in upstreams.values()
                    for spec in ups.spec.versions.values() if spec.tls is not None]
    route_configs = build_route_configurations(
        listeners, routes, state.upstreams, traffic, problems
    )
    resources = ResourceSet.of(
        listeners=build_listeners(listeners, edge=edge),
        routes=route_configs,
        clusters=build_clusters(upstreams.values(), group=group, edge=edge,
                                credentials=state.credentials),
        endpoints=build_endpoints(upstreams.values(), traffic, state.discovered),
        secrets=build_secrets(
            group, tls=[lst.spec.tls for lst in listeners if lst.spec.tls],
            credentials=credentials, material=secrets, problems=problems,
            upstream_tls=upstream_tls,
        ),
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


def _without(upstream: Upstream, versions: frozenset[str]) -> Upstream:
    """`upstream` minus retired `versions` (never its active one)."""
    gone = versions - {upstream.spec.active}
    if not gone & upstream.spec.versions.keys():
        return upstream
    kept = {v: spec for v, spec in upstream.spec.versions.items() if v not in gone}
    return upstream.model_copy(
        update={"spec": upstream.spec.model_copy(update={"versions": kept})})
