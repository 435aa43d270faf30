"""Which MetricsService pushes count: only the fleet's own, for the clusters it routes to.

A push steers rollouts (fake 5xx roll one back, fake 2xx promote one), so a flush counts
only when

* its stream was authenticated like an ADS stream: the sender's group comes from its
  client certificate under mTLS, or from the node's `cluster` in plaintext (`Identify`,
  given by the wiring, which knows the transport), and its certificate is not revoked;
* the sender is a connected xDS proxy of that group on this replica (same group and node
  id, and under mTLS the same client certificate as that proxy's ADS stream, so another
  certificate of the group cannot speak for it), checked at every flush: a proxy whose
  ADS stream comes up a moment after its metrics stream counts from then on, and one
  whose ADS stream ended stops counting;
* and then only its samples of the `upstream|version` clusters its group's routes reach
  (`RoutedClusters`); the rest are dropped.

Ignored flushes are counted (`on_ignored(reason)`, a Prometheus counter in the wiring)
and logged at most once per sender per `LOG_EVERY_S`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from controlplane.analysis.decide import version_cluster
from controlplane.model import DesiredState

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 256
"""A node id or cluster longer than this refuses the stream (INVALID_ARGUMENT)."""

LOG_EVERY_S = 60.0
"""One log line per sender and this many seconds at most: a sender flushes every second."""

MAX_LOGGED_SENDERS = 10_000
"""Senders whose last log line is remembered; past this the oldest are forgotten."""

NOT_CONNECTED = "not_connected"
"""`on_ignored` reason: the sender is not a connected xDS proxy of its group here."""
FOREIGN_CLUSTERS = "foreign_clusters"
"""`on_ignored` reason: a flush named clusters its group does not route to (dropped)."""

_C = TypeVar("_C")
_G = TypeVar("_G")


@dataclass(frozen=True)
class Sender:
    """Who pushes on a metrics stream, once authenticated."""

    node_id: str
    group: str
    serial: str = ""
    """Its client certificate's serial ("" in plaintext)."""


Identify = Callable[[str, str, "grpc.aio.ServicerContext[Any, Any]"], Sender]
"""(claimed node id, claimed node cluster, the stream's context) → the `Sender`.

Raises a ControlPlaneError to refuse the stream: AuthenticationError (no or a revoked
certificate), PermissionDeniedError, or InvalidInputError (e.g. no cluster)."""


def routed_clusters(state: DesiredState) -> dict[str, frozenset[str]]:
    """Group → the `upstream|version` clusters of every upstream its listeners' routes
    reach (every version: a rollout's split, mirror or switch may use any)."""
    upstreams: dict[str, set[str]] = {}
    for route in state.routes.values():
        listener = state.listeners.get(route.spec.listener)
        if listener is not None:
            upstreams.setdefault(listener.spec.group, set()).add(route.spec.upstream)
    return {
        group: frozenset(version_cluster(name, version) for name in names
                         if (upstream := state.upstreams.get(name)) is not None
                         for version in upstream.spec.versions)
        for group, names in upstreams.items()
    }


class RoutedClusters:
    """`routed_clusters` of the latest state, worked out once per state on first use.

    Call `update` with every new state; call the object with a group."""

    def __init__(self, state: DesiredState | None = None) -> None:
        self._state = state
        self._by_group: dict[str, frozenset[str]] | None = None

    def update(self, state: DesiredState) -> None:
        if state is not self._state:
            self._state, self._by_group = state, None

    def __call__(self, group: str) -> frozenset[str]:
        if self._by_group is None:
            self._by_group = {} if self._state is None else routed_clusters(self._state)
        return self._by_group.get(group, frozenset())


class Admission:
    """The per-flush decisions for authenticated senders (one event loop).

    Args:
        connected: whether the sender is a connected xDS proxy on this replica (same
            group and node id, and under mTLS the same client certificate).
        clusters_of: group → the clusters whose samples count (`RoutedClusters`).
        revoked: revoked certificate serials; a stream whose serial is in it is ended.
        on_ignored: called with NOT_CONNECTED or FOREIGN_CLUSTERS for every flush
            ignored (wholly or in part).
        clock: for the log's rate limit.
    """

    def __init__(self, *, connected: Callable[[Sender], bool],
                 clusters_of: Callable[[str], Container[str]],
                 revoked: Container[str] = frozenset(),
                 on_ignored: Callable[[str], None] = lambda reason: None,
                 clock: Callable[[], float]) -> None:
        self._connected = connected
        self._clusters_of = clusters_of
        self._revoked = revoked
        self._on_ignored = on_ignored
        self._clock = clock
        self._logged: dict[tuple[str, str, str], float] = {}

    def revoked(self, sender: Sender) -> bool:
        """Whether the sender's certificate was revoked since its stream began."""
        return bool(sender.serial) and sender.serial in self._revoked

    def counts(self, sender: Sender) -> bool:
        """Whether this flush of `sender` counts at all (it is a connected proxy)."""
        if self._connected(sender):
            return True
        self._on_ignored(NOT_CONNECTED)
        self._warn(sender, NOT_CONNECTED,
                   "is not a connected xDS proxy of that group on this replica")
        return False

    def routed(self, sender: Sender, counts: Mapping[str, _C], gauges: Mapping[str, _G]
               ) -> tuple[dict[str, _C], dict[str, _G]]:
        """`counts` and `gauges` (per cluster) without the clusters `sender`'s group
        does not route to."""
        allowed = self._clusters_of(sender.group)
        foreign = sorted({c for c in (*counts, *gauges) if c not in allowed})
        if not foreign:
            return dict(counts), dict(gauges)
        self._on_ignored(FOREIGN_CLUSTERS)
        shown = ", ".join(repr(c) for c in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        self._warn(sender, FOREIGN_CLUSTERS,
                   f"named clusters its group does not route to: {shown}{more} "
                   "(their samples were dropped)")
        return ({c: v for c, v in counts.items() if c in allowed},
                {c: v for c, v in gauges.items() if c in allowed})

    def _warn(self, sender: Sender, reason: str, why: str) -> None:
        now = self._clock()
        key = (sender.group, sender.node_id, reason)
        last = self._logged.get(key)
        if last is not None and now - last < LOG_EVERY_S:
            return
        if last is None and len(self._logged) >= MAX_LOGGED_SENDERS:
            del self._logged[next(iter(self._logged))]  # the oldest entry
        self._logged.pop(key, None)  # re-inserted last: the dict stays oldest first
        self._logged[key] = now
        log.warning("metrics from node %r of group %r ignored: it %s (next such line for "
                    "it in %gs at the earliest)", sender.node_id, sender.group, why,
                    LOG_EVERY_S)
