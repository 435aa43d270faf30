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
from controlplane.model.resources import RateLimit, Retries, UpstreamSpec
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

_SettingsKey = tuple[str, Retries | None]
"""The upstream settings `_shared_settings` reads (models are frozen, hence hashable)."""


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
    settings: dict[_SettingsKey, RouteAction] = {}
    configs = []
    for listener in listeners:
        config = RouteConfiguration(name=route_config_name(listener.name))
        _add_virtual_hosts(config, by_listener.get(listener.name, []), upstreams, traffic,
                           problems, settings)
        configs.append(config)
    return configs


def _add_virtual_hosts(
    config: RouteConfiguration,
    routes: Sequence[Route],
    upstreams: Mapping[str, Upstream],
    traffic: Mapping[str, TrafficPolicy],
    problems: list[str],
    settings: dict[_SettingsKey, RouteAction],
) -> None:
    """`routes` as `config`'s virtual hosts, sorted by name.

    Messages are filled in place (`add()`), not built and then passed to their parent's
    constructor, which would copy every route once per level.
    """
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
    # Every host is in exactly one group, so vhost names are unique.
    named = sorted(
        ((vhost_name(hosts), hosts, route_names)
         for route_names, hosts in hosts_of_group.items()),
        key=lambda item: item[0],
    )
    for name, hosts, route_names in named:
        vhost = config.virtual_hosts.add(name=name, domains=sorted(hosts))
        ordered = sorted(
            (usable[n] for n in route_names), key=lambda r: (-len(r.spec.prefix), r.name)
        )
        for route in ordered:
            upstream = upstreams[route.spec.upstream]
            _add_routes(vhost, route, upstream, traffic.get(upstream.name), settings)


def _add_routes(
    vhost: VirtualHost,
    route: Route,
    upstream: Upstream,
    policy: TrafficPolicy | None,
    settings: dict[_SettingsKey, RouteAction],
) -> None:
    """Appends the Envoy routes for one Route resource to `vhost`, in match order.

    Without a policy: one route to the active version's cluster. With one: match
    routes (headers, then cookie) to the `to` cluster, then the weighted split.
    `settings` memoizes the upstream settings routes share (`_shared_settings`).
    """
    shared = _shared_settings(upstream.spec, settings)
    if policy is None or policy.rolling:
        # A rolling update keeps one cluster (`from`); EDS swaps its endpoints.
        version = policy.from_version if policy is not None else upstream.spec.active
        proto = _route(vhost, route.name, route, upstream, shared)
        proto.route.cluster = cluster_name(upstream.name, version)
        return
    to_cluster = cluster_name(upstream.name, policy.to_version)
    if policy.match_headers:
        proto = _route(vhost, match_route_name(route.name, "headers"), route, upstream, shared)
        proto.match.headers.extend([
            HeaderMatcher(name=name, string_match=StringMatcher(exact=value))
            for name, value in sorted(policy.match_headers.items())
        ])
        proto.route.cluster = to_cluster
    if policy.match_cookie:
        proto = _route(vhost, match_route_name(route.name, "cookie"), route, upstream, shared)
        proto.match.headers.append(cookie_matcher(policy.match_cookie))
        proto.route.cluster = to_cluster
    proto = _route(vhost, route.name, route, upstream, shared)
    proto.route.MergeFrom(_split_action(upstream.name, policy))


def _shared_settings(spec: UpstreamSpec, memo: dict[_SettingsKey, RouteAction]) -> RouteAction:
    """The upstream's timeout and retries, as a RouteAction to merge into each route's.

    Built once per distinct setting (`memo`): a config repeats a few of them thousands
    of times, and a C-level merge is much cheaper than building the messages again.
    """
    key = (spec.timeout, spec.retries)
    action = memo.get(key)
    if action is None:
        action = memo[key] = RouteAction(timeout=duration(spec.timeout))
        if spec.retries is not None:
            action.retry_policy.CopyFrom(_retry_policy(spec.retries))
    return action


def _route(
    vhost: VirtualHost, name: str, route: Route, upstream: Upstream, shared: RouteAction
) -> RouteProto:
    """A new route of `vhost` on the Route's prefix, with the upstream's timeout, retries
    and rate limit; the caller adds header matches and where the route sends traffic."""
    proto = vhost.routes.add(name=name)
    proto.match.prefix = route.spec.prefix
    proto.route.MergeFrom(shared)
    if upstream.spec.rate_limit is not None:
        proto.typed_per_filter_config[LOCAL_RATELIMIT_FILTER].CopyFrom(
            pack(_rate_limit(route.name, upstream.spec.rate_limit))
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
            action, name = route.route, route.name
            # cluster and weighted_clusters are one oneof: look at the second only when
            # the first is empty (each accessor makes a Python wrapper; there is one
            # route per upstream or more).
            if action.cluster:
                out.append((name, action.cluster))
            elif action.HasField("weighted_clusters"):
                out.extend((name, w.name) for w in action.weighted_clusters.clusters)
            mirrors = action.request_mirror_policies
            if mirrors:
                out.extend((name, m.cluster) for m in mirrors)
    return out
