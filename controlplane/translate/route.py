"""Route resources → one RouteConfiguration per listener (RDS).

Routes are grouped into virtual hosts by the hosts they list. When host lists
overlap (`[a, b]` and `[b]`), hosts are partitioned by the set of routes that name
them, so every domain appears in exactly one virtual host (Envoy NACKs a duplicate
domain) and each host still gets every route that names it. Within a virtual host,
routes are ordered longest prefix first, then by name: Envoy takes the first match.

A TrafficPolicy (a rollout's state) turns the single cluster into a weighted split,
adds match routes that pin A/B traffic to the `to` version ahead of the split, and
mirrors a share of requests to `to`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from envoy.config.core.v3.base_pb2 import RuntimeFractionalPercent
from envoy.config.route.v3.route_components_pb2 import (
    HeaderMatcher,
    RetryPolicy,
    RouteAction,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from envoy.config.route.v3.route_components_pb2 import Route as RouteProto
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2 import LocalRateLimit
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.v3.percent_pb2 import FractionalPercent
from envoy.type.v3.token_bucket_pb2 import TokenBucket
from google.protobuf.wrappers_pb2 import UInt32Value

from controlplane.model import Listener, Route, Upstream
from controlplane.model.resources import RateLimit, Retries
from controlplane.model.traffic import TrafficPolicy
from controlplane.translate.common import duration, pack
from controlplane.translate.names import (
    LOCAL_RATELIMIT_FILTER,
    cluster_name,
    match_route_name,
    route_config_name,
    vhost_name,
)

TOTAL_WEIGHT = 10_000
"""Weighted cluster weights are in hundredths of a percent; they always sum to this."""

_HOST = re.compile(r"^[!-~]+$")  # printable ASCII, no spaces: what a Host header can carry


def build_route_configurations(
    listeners: Iterable[Listener],
    routes: Iterable[Route],
    upstreams: Mapping[str, Upstream],
    traffic: Mapping[str, TrafficPolicy],
    problems: list[str],
) -> list[RouteConfiguration]:
    """One RouteConfiguration per listener, holding the routes attached to it.

    Args:
        listeners: the group's listeners.
        routes: routes attached to those listeners.
        upstreams: every upstream, by name.
        traffic: rollout traffic policies, by upstream name.
        problems: where a route that cannot be translated is reported (it is left out).
    """
    by_listener: dict[str, list[Route]] = {}
    for route in routes:
        by_listener.setdefault(route.spec.listener, []).append(route)
    return [
        RouteConfiguration(
            name=route_config_name(listener.name),
            virtual_hosts=_virtual_hosts(
                by_listener.get(listener.name, []), upstreams, traffic, problems
            ),
        )
        for listener in listeners
    ]


def _virtual_hosts(
    routes: Sequence[Route],
    upstreams: Mapping[str, Upstream],
    traffic: Mapping[str, TrafficPolicy],
    problems: list[str],
) -> list[VirtualHost]:
    routes_of_host: dict[str, set[str]] = {}
    usable: dict[str, Route] = {}
    for route in routes:
        if route.spec.upstream not in upstreams:
            problems.append(
                f"Route/{route.name}: spec.upstream: no Upstream named {route.spec.upstream!r}"
            )
            continue
        bad = [h for h in route.spec.hosts if not _HOST.match(h)]
        if bad:
            problems.append(f"Route/{route.name}: spec.hosts: {bad} are not valid host names")
            continue
        usable[route.name] = route
        for host in route.spec.hosts:
            # Envoy matches domains case-insensitively and NACKs duplicates after lowering.
            routes_of_host.setdefault(host.lower(), set()).add(route.name)
    hosts_of_group: dict[frozenset[str], list[str]] = {}
    for host, names in routes_of_host.items():
        hosts_of_group.setdefault(frozenset(names), []).append(host)
    vhosts = []
    for route_names, hosts in hosts_of_group.items():
        ordered = sorted(
            (usable[n] for n in route_names), key=lambda r: (-len(r.spec.prefix), r.name)
        )
        envoy_routes: list[RouteProto] = []
        for route in ordered:
            upstream = upstreams[route.spec.upstream]
            envoy_routes.extend(build_routes(route, upstream, traffic.get(upstream.name)))
        vhosts.append(
            VirtualHost(name=vhost_name(hosts), domains=sorted(hosts), routes=envoy_routes)
        )
    return sorted(vhosts, key=lambda v: str(v.name))


def build_routes(
    route: Route, upstream: Upstream, policy: TrafficPolicy | None = None
) -> list[RouteProto]:
    """The Envoy routes for one Route resource, in match order.

    Without a policy: one route to the active version's cluster. With one: match
    routes (headers, then cookie) to the `to` cluster, then the weighted split.
    """
    if policy is None or policy.rolling:
        # A rolling update keeps one cluster (`from`); EDS swaps its endpoints.
        version = policy.from_version if policy is not None else upstream.spec.active
        return [_route(route.name, route, upstream, RouteMatch(prefix=route.spec.prefix),
                       RouteAction(cluster=cluster_name(upstream.name, version)))]
    to_cluster = cluster_name(upstream.name, policy.to_version)
    out: list[RouteProto] = []
    if policy.match_headers:
        match = RouteMatch(prefix=route.spec.prefix, headers=[
            HeaderMatcher(name=name, string_match=StringMatcher(exact=value))
            for name, value in sorted(policy.match_headers.items())
        ])
        out.append(_route(match_route_name(route.name, "headers"), route, upstream, match,
                          RouteAction(cluster=to_cluster)))
    if policy.match_cookie:
        match = RouteMatch(prefix=route.spec.prefix, headers=[cookie_matcher(policy.match_cookie)])
        out.append(_route(match_route_name(route.name, "cookie"), route, upstream, match,
                          RouteAction(cluster=to_cluster)))
    out.append(_route(route.name, route, upstream, RouteMatch(prefix=route.spec.prefix),
                      _split_action(upstream.name, policy)))
    return out


def _route(
    name: str, route: Route, upstream: Upstream, match: RouteMatch, action: RouteAction
) -> RouteProto:
    """A route with the upstream's timeout, retries and rate limit applied to `action`."""
    spec = upstream.spec
    action.timeout.CopyFrom(duration(spec.timeout))
    if spec.retries is not None:
        action.retry_policy.CopyFrom(_retry_policy(spec.retries))
    proto = RouteProto(name=name, match=match, route=action)
    if spec.rate_limit is not None:
        proto.typed_per_filter_config[LOCAL_RATELIMIT_FILTER].CopyFrom(
            pack(_rate_limit(route.name, spec.rate_limit))
        )
    return proto


def _split_action(upstream: str, policy: TrafficPolicy) -> RouteAction:
    to_weight = split_weights(policy.weight)
    action = RouteAction(weighted_clusters=WeightedCluster(clusters=[
        WeightedCluster.ClusterWeight(
            name=cluster_name(upstream, policy.from_version),
            weight=UInt32Value(value=TOTAL_WEIGHT - to_weight),
        ),
        WeightedCluster.ClusterWeight(
            name=cluster_name(upstream, policy.to_version),
            weight=UInt32Value(value=to_weight),
        ),
    ]))
    if policy.mirror_percent:
        action.request_mirror_policies.append(RouteAction.RequestMirrorPolicy(
            cluster=cluster_name(upstream, policy.to_version),
            runtime_fraction=RuntimeFractionalPercent(
                default_value=fractional_percent(policy.mirror_percent)
            ),
        ))
    return action


def split_weights(percent: float) -> int:
    """The `to` weight, in hundredths of a percent, for `percent` (clamped to 0-100)."""
    return max(0, min(TOTAL_WEIGHT, round(percent * 100)))


def fractional_percent(percent: float) -> FractionalPercent:
    """`percent` as a FractionalPercent: out of a hundred if whole, else of ten thousand."""
    if float(percent).is_integer():
        return FractionalPercent(numerator=int(percent), denominator=FractionalPercent.HUNDRED)
    return FractionalPercent(
        numerator=round(percent * 100), denominator=FractionalPercent.TEN_THOUSAND
    )


def cookie_matcher(cookie: str) -> HeaderMatcher:
    """Matches requests whose Cookie header carries `name=value` (as its own cookie).

    Envoy's safe_regex must match the whole header value, hence the `.*` on each side.
    """
    name, _, value = cookie.partition("=")
    regex = rf"(.*;\s*)?{re.escape(name)}={re.escape(value)}(\s*;.*)?"
    return HeaderMatcher(
        name="cookie", string_match=StringMatcher(safe_regex=RegexMatcher(regex=regex))
    )


def _retry_policy(spec: Retries) -> RetryPolicy:
    policy = RetryPolicy(
        retry_on=",".join(t.strip() for t in spec.on.split(",") if t.strip()),
        num_retries=UInt32Value(value=spec.attempts),
    )
    if spec.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(duration(spec.per_try_timeout))
    return policy


def _rate_limit(stat_prefix: str, spec: RateLimit) -> LocalRateLimit:
    always = RuntimeFractionalPercent(
        default_value=FractionalPercent(numerator=100, denominator=FractionalPercent.HUNDRED)
    )
    return LocalRateLimit(
        stat_prefix=stat_prefix,
        token_bucket=TokenBucket(
            max_tokens=spec.burst or spec.requests_per_second,
            tokens_per_fill=UInt32Value(value=spec.requests_per_second),
            fill_interval=duration("1s"),
        ),
        filter_enabled=always,
        filter_enforced=always,
    )


def policy_problems(traffic: Mapping[str, TrafficPolicy], used: Iterable[str]) -> list[str]:
    """Traffic policies of upstreams in `used` that cannot be expressed in Envoy."""
    problems: list[str] = []
    for name in sorted(set(used) & set(traffic)):
        policy = traffic[name]
        where = f"TrafficPolicy/{name}"
        if policy.upstream != name:
            problems.append(f"{where}: is keyed by {name!r} but is for {policy.upstream!r}")
        if policy.from_version == policy.to_version:
            problems.append(f"{where}: from and to are both {policy.to_version!r}")
        if not 0 <= policy.weight <= 100:
            problems.append(f"{where}: weight {policy.weight} is not a percent in 0-100")
        if policy.mirror_percent is not None and not 0 <= policy.mirror_percent <= 100:
            problems.append(f"{where}: mirror_percent {policy.mirror_percent} is not in 0-100")
        if policy.match_cookie is not None and "=" not in policy.match_cookie.strip("="):
            problems.append(f"{where}: match_cookie {policy.match_cookie!r} is not name=value")
    return problems


def referenced_clusters(config: RouteConfiguration) -> list[tuple[str, str]]:
    """(route name, cluster name) for every cluster a RouteConfiguration sends traffic to."""
    out: list[tuple[str, str]] = []
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            action = route.route
            if action.cluster:
                out.append((route.name, action.cluster))
            out.extend((route.name, w.name) for w in action.weighted_clusters.clusters)
            out.extend((route.name, m.cluster) for m in action.request_mirror_policies)
    return out
