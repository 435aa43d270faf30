"""How one upstream's traffic is split while a rollout runs: the rollout engine's output,
translate's input. Without one, an upstream's traffic goes to `spec.active`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class TrafficPolicy:
    """Traffic of `upstream` split between two of its versions.

    Attributes:
        weight: percent (0-100, 0.01 resolution) of traffic sent to `to_version`.
        match_headers: requests carrying all these headers (exact values) always go to
            `to_version`, whatever the weight (A/B routing).
        match_cookie: `name=value`; a request with that cookie always goes to `to_version`.
        mirror_percent: percent of `from_version` traffic copied to `to_version`;
            the copies' responses are discarded.
        rolling: instead of splitting between two clusters, the `from` cluster keeps
            all traffic and EDS swaps its endpoints for `to`'s, `weight` percent at a time.
    """

    upstream: str
    from_version: str
    to_version: str
    weight: float = 0.0
    match_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    match_cookie: str | None = None
    mirror_percent: float | None = None
    rolling: bool = False
