"""Whether the fleet carries the config a desired state implies: the rollout engine's
view of the proxies. A step counts as applied only when every connected proxy of the
groups that route to the upstream has ACKed exactly the snapshot that carries it."""

from __future__ import annotations

from controlplane.model import DesiredState
from controlplane.rollout.engine import FleetProgress
from controlplane.rollout.traffic import traffic_of
from controlplane.translate import translate
from controlplane.xds.proxies import ProxyRegistry
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.snapshot import Snapshot

_CHECKED = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


def groups_routing_to(state: DesiredState, upstream: str) -> list[str]:
    """Proxy groups with a listener whose routes send traffic to `upstream`."""
    groups = set()
    for route in state.routes.values():
        listener = state.listeners.get(route.spec.listener)
        if route.spec.upstream == upstream and listener is not None:
            groups.add(listener.spec.group)
    return sorted(groups)


class RegistryFleet:
    """FleetView over this replica's connected proxies."""

    def __init__(self, registry: ProxyRegistry) -> None:
        self._registry = registry

    def progress(self, state: DesiredState, rollout: str) -> FleetProgress:
        upstream = state.rollouts[rollout].spec.upstream
        traffic = traffic_of(state)
        acked = total = 0
        nack: str | None = None
        for group in groups_routing_to(state, upstream):
            expected = Snapshot.build(
                translate(state, group=group, traffic=traffic).by_type_url()
            ).versions
            for proxy in self._registry.list(group):
                total += 1
                versions = {url: expected[url] for url in _CHECKED
                            if url in expected and proxy.type(url) is not None}
                if proxy.has_acked(versions):
                    acked += 1
                elif proxy.has_nacked(versions):
                    nack = next(
                        f"{proxy.node_id}: {t.last_nack}" for url in versions
                        if (t := proxy.type(url)) is not None and t.last_nack
                        and t.last_nack_version == versions[url]
                    )
        return FleetProgress(acked, total, nack)
