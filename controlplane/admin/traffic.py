"""The traffic in force of each upstream, as `get upstream` shows it under `status`:
derived from the translation of the current state (what every proxy group is sent), not
from the spec, so a user can see it equals what they asked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.errors import ControlPlaneError
from controlplane.model import DesiredState
from controlplane.stage import resources_of
from controlplane.translate.common import split_endpoint
from controlplane.translate.weights import Owners, upstream_weights


def traffic_in_force(state: DesiredState) -> Mapping[str, list[dict[str, Any]]]:
    """Upstream → `[{group, weights: {version: percent}}]`, one entry per proxy group
    whose routes reach it (sorted by group). A group whose state does not translate keeps
    its last good config: its entry carries `error` instead of weights."""
    owners = _owners(state)
    out: dict[str, list[dict[str, Any]]] = {}
    for group in state.groups():
        try:
            # Secrets do not change where routes send traffic: placeholders stand in.
            resources = resources_of(state, group)
        except ControlPlaneError as exc:
            for upstream in _routed(state, group):
                out.setdefault(upstream, []).append({"group": group, "error": str(exc)})
            continue
        for upstream, splits in upstream_weights(resources, owners).items():
            for weights in splits:
                out.setdefault(upstream, []).append(
                    {"group": group, "weights": {v: _number(p) for v, p in
                                                 sorted(weights.items())}})
    return out


def _owners(state: DesiredState) -> Owners:
    """Which version lists each endpoint: a rolling update mixes them in one cluster."""
    out: dict[str, dict[tuple[str, int], str]] = {}
    for name, upstream in state.upstreams.items():
        mine = out.setdefault(name, {})
        for version in sorted(upstream.spec.versions):
            for address in state.addresses(name, version):
                mine.setdefault(split_endpoint(address.address), version)
    return out


def _routed(state: DesiredState, group: str) -> set[str]:
    listeners = {n for n, lst in state.listeners.items() if lst.spec.group == group}
    return {r.spec.upstream for r in state.routes.values() if r.spec.listener in listeners}


def _number(percent: float) -> float | int:
    return int(percent) if float(percent).is_integer() else percent
