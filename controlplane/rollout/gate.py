"""Which rollout steps wait for healthy endpoints, and on which cluster and count.

A blue-green rollout previews `to` at 0% and switches only once Envoy's health checks
pass on every `to` endpoint; a rolling update's batch counts as done only once the
upstream's one cluster, with the batch's new endpoints in it, is healthy everywhere.
Without a `healthCheck` on the upstream Envoy has nothing to check, so nothing waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.model import DesiredState
from controlplane.model.status import Phase, RolloutStatus
from controlplane.translate.endpoint import rolling_endpoints
from controlplane.translate.names import cluster_name

_WAITING = frozenset({Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING})


@dataclass(frozen=True)
class HealthGate:
    """The step waits until every proxy sees `expected` healthy endpoints in `cluster`."""

    cluster: str
    expected: int


def health_gate(state: DesiredState, rollout: str, status: RolloutStatus) -> HealthGate | None:
    """The gate the rollout's current step waits on before it counts as applied, if any."""
    spec = state.rollouts[rollout].spec
    upstream = state.upstreams.get(spec.upstream)
    if upstream is None or upstream.spec.health_check is None or status.applied:
        return None
    versions = upstream.spec.versions
    if spec.from_ not in versions or spec.to not in versions or status.phase not in _WAITING:
        return None
    if spec.strategy == "bluegreen" and status.step == 0 and status.weight == 0:
        return HealthGate(cluster_name(upstream.name, spec.to),
                          len(state.addresses(upstream.name, spec.to)))
    if spec.strategy == "rolling" and status.weight > 0:
        endpoints = rolling_endpoints(
            [a.address for a in state.addresses(upstream.name, spec.from_)],
            [a.address for a in state.addresses(upstream.name, spec.to)], status.weight)
        return HealthGate(cluster_name(upstream.name, spec.from_), len(endpoints))
    return None
