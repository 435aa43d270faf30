"""Rollout statuses → how each upstream's traffic is split: translate's `traffic` input."""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.model import DesiredState
from controlplane.model.status import Phase
from controlplane.model.traffic import TrafficPolicy

# While rolling back or after an abort, `match` and mirroring stop with the weight.
_STEERING = frozenset({Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING})


def traffic_of(state: DesiredState) -> Mapping[str, TrafficPolicy]:
    """Upstream name → its split, for every rollout in an active phase.

    A finished rollout has no policy: the upstream's `active` version (which the
    engine set on success, or left at `from`) takes all traffic. Within the rollback
    window after a success, `from` stays configured at 0% (`from_retained`).
    """
    out: dict[str, TrafficPolicy] = {}
    # Active rollouts first: they win over a finished one still retaining its `from`.
    for name, rollout in sorted(state.rollouts.items(),
                                key=lambda item: not state.status(item[0]).active):
        status = state.status(name)
        spec = rollout.spec
        if not (status.active or status.from_retained) or spec.upstream not in state.upstreams:
            continue
        if not status.active and spec.upstream in out:
            continue  # a new rollout of the upstream supersedes an old one's retained `from`
        if not status.active and state.upstreams[spec.upstream].spec.active != spec.to:
            continue  # `active` changed since the rollout finished: it is what is in force
        steering = status.phase in _STEERING
        mirror = None
        if steering and status.weight == 0 and (
            spec.mirror is not None or spec.strategy == "mirror-then-canary"
        ):
            mirror = spec.mirror.percent if spec.mirror is not None else 100.0
        out[spec.upstream] = TrafficPolicy(
            upstream=spec.upstream,
            from_version=spec.from_,
            to_version=spec.to,
            weight=status.weight,
            match_headers=dict(spec.match.headers) if steering and spec.match else {},
            match_cookie=spec.match.cookie if steering and spec.match else None,
            mirror_percent=mirror,
            # After success (from retained) even a rolling update routes to `to`'s
            # own cluster, so that retiring `from`'s later moves no traffic.
            rolling=spec.strategy == "rolling" and status.active,
        )
    return out


def retired_of(state: DesiredState) -> Mapping[str, frozenset[str]]:
    """Upstream name → versions no longer configured (translate's `retired` input): the
    `from` of a rollout that succeeded and whose rollback window has ended, unless the
    upstream's active version or a running rollout still uses it. Like Argo Rollouts
    scaling down the old ReplicaSet after its delay: `from`'s cluster and account go."""
    in_use: dict[str, set[str]] = {}
    done: dict[str, set[str]] = {}
    for name, rollout in state.rollouts.items():
        status, spec = state.status(name), rollout.spec
        if status.active or status.from_retained:
            in_use.setdefault(spec.upstream, set()).update((spec.from_, spec.to))
        elif status.phase == Phase.SUCCEEDED:
            done.setdefault(spec.upstream, set()).add(spec.from_)
    out: dict[str, frozenset[str]] = {}
    for upstream, versions in done.items():
        known = state.upstreams.get(upstream)
        if known is None:
            continue
        keep = in_use.get(upstream, set()) | {known.spec.active}
        gone = frozenset(v for v in versions if v not in keep and v in known.spec.versions)
        if gone:
            out[upstream] = gone
    return out
