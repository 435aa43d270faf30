"""Every name translate gives an Envoy resource, in one place, so other stages can parse them.

Resource names come from the model, where they are RFC 1123 labels without dots or
pipes (`payments`, `v2`): a `|` is therefore a safe separator, and no dot ends up in
a stat name, where Envoy would split it into tags.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from controlplane.errors import TranslationError

CLUSTER_SEPARATOR = "|"
LOCAL_RATELIMIT_FILTER = "envoy.filters.http.local_ratelimit"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
LISTENER_RATELIMIT_STAT_PREFIX = "http_local_rate_limiter"
"""Stat prefix of the listener-level local rate limit filter (off unless a route enables it)."""

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def cluster_name(upstream: str, version: str) -> str:
    """The Envoy cluster (and ClusterLoadAssignment) name of one version of an upstream.

    >>> cluster_name("payments", "v2")
    'payments|v2'
    """
    return f"{upstream}{CLUSTER_SEPARATOR}{version}"


def parse_cluster_name(name: str) -> tuple[str, str]:
    """The (upstream, version) a `cluster_name` result names; the inverse of `cluster_name`.

    Errors:
        TranslationError: `name` is not `<label>|<label>`.
    """
    upstream, sep, version = name.partition(CLUSTER_SEPARATOR)
    if not sep or not _LABEL.match(upstream) or not _LABEL.match(version):
        raise TranslationError(f"{name!r} is not a cluster name of the form <upstream>|<version>")
    return upstream, version


def route_config_name(listener: str) -> str:
    """The RouteConfiguration an HCM asks for over RDS: named after its listener."""
    return listener


def vhost_name(domains: Iterable[str]) -> str:
    """A virtual host's name, from its domains (order does not matter).

    >>> vhost_name(["b.example.com", "a.example.com"])
    'a.example.com,b.example.com'
    """
    return ",".join(sorted(domains))


def match_route_name(route: str, kind: str) -> str:
    """The name of the extra route that sends matching requests to a rollout's `to` version."""
    return f"{route}/match-{kind}"
