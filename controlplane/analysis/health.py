"""Endpoint health as the fleet's Envoys see it, for blue-green switches and rolling batches.

Envoy runs the active health checks (the cluster's `health_checks`); the control plane
only reads their outcome: the `cluster.membership_healthy` and `cluster.membership_total`
gauges each proxy pushes through the metrics sink. A replica keeps every connected
proxy's latest gauges (`HealthBoard`), sums them per cluster (`Membership`) into its
report in etcd, and the rollout leader adds up the replicas' reports.

Pure: no clock and no I/O; time comes in as `now`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Gauges = Mapping[str, tuple[int, int]]
"""Cluster → (healthy endpoints, all endpoints), as one proxy reported them."""


@dataclass(frozen=True)
class Membership:
    """One cluster's endpoints as the reporting proxies see them, summed over proxies.

    Attributes:
        proxies: proxies that reported the cluster.
        all_healthy: of those, how many see every one of its endpoints healthy.
        healthy / total: endpoints, summed over those proxies.
        as_of: the oldest of those proxies' latest reports (seconds since the epoch), so a
            report from before a config change is never taken for one after it.
    """

    proxies: int = 0
    all_healthy: int = 0
    healthy: int = 0
    total: int = 0
    as_of: float = 0.0

    def add(self, other: Membership) -> Membership:
        if not self.proxies:
            return other
        if not other.proxies:
            return self
        return Membership(self.proxies + other.proxies, self.all_healthy + other.all_healthy,
                          self.healthy + other.healthy, self.total + other.total,
                          min(self.as_of, other.as_of))

    def ready(self, expected: int, after: float) -> bool:
        """Every reporting proxy sees `expected` endpoints, all healthy, in a report made
        after `after` (the moment the fleet ACKed the config that carries them)."""
        return (self.proxies > 0 and self.all_healthy == self.proxies
                and self.total == expected * self.proxies and self.as_of > after)

    def describe(self, expected: int) -> str:
        if not self.proxies:
            return ("no proxy has reported its health checks yet (do the proxies' bootstraps "
                    "carry the metrics sink? `controlplane bootstrap` adds it)")
        per_proxy = f"{self.healthy}/{self.total}" if self.proxies == 1 else (
            f"{self.healthy}/{self.total} over {self.proxies} proxies")
        return (f"{per_proxy} endpoint(s) healthy, {expected} expected per proxy; "
                f"{self.all_healthy}/{self.proxies} proxies see all healthy")

    def to_list(self) -> list[float]:
        return [self.proxies, self.all_healthy, self.healthy, self.total, self.as_of]

    @classmethod
    def from_list(cls, raw: list[float]) -> Membership:
        proxies, all_healthy, healthy, total, as_of = raw
        return cls(int(proxies), int(all_healthy), int(healthy), int(total), float(as_of))


class HealthBoard:
    """Each connected proxy's latest gauges, by metrics stream; a stream's entry goes
    when the stream ends. Not thread-safe: use it from one event loop."""

    def __init__(self) -> None:
        self._streams: dict[int, tuple[float, dict[str, tuple[int, int]]]] = {}

    def update(self, stream: int, now: float, gauges: Gauges) -> None:
        if gauges:
            self._streams[stream] = (now, dict(gauges))

    def drop(self, stream: int) -> None:
        self._streams.pop(stream, None)

    def summary(self) -> dict[str, Membership]:
        out: dict[str, Membership] = {}
        for at, gauges in self._streams.values():
            for cluster, (healthy, total) in gauges.items():
                one = Membership(1, int(healthy == total), healthy, total, at)
                out[cluster] = out.get(cluster, Membership()).add(one)
        return out


def fleet(reports: Iterable[Mapping[str, Membership]], cluster: str) -> Membership:
    """One cluster's membership over every replica's report."""
    out = Membership()
    for report in reports:
        if cluster in report:
            out = out.add(report[cluster])
    return out


def encode(summary: Mapping[str, Membership]) -> bytes:
    doc = {cluster: m.to_list() for cluster, m in sorted(summary.items())}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(raw: bytes) -> dict[str, Membership]:
    return {cluster: Membership.from_list(v) for cluster, v in json.loads(raw).items()}
