"""Per-cluster request counts in one-second slots: what a replica's proxies reported, added
up, and the sums over a window that the rollout analysis judges.

Pure: no clock and no I/O; every function takes `now` (seconds since the epoch). Counts
add up across proxies, replicas and seconds because Envoy reports counters as deltas
and histograms per flush interval (`report_counters_as_deltas`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SLOT_S = 1
RETENTION_S = 120
"""Slots older than this are dropped; a window never reaches further back (it also bounds
the size of a replica's report in etcd: one entry per second per busy cluster)."""


@dataclass
class Counts:
    """Responses of one cluster (one upstream version).

    Attributes:
        requests: responses received from the upstream (every class, retries included).
        server_errors: 5xx responses.
        auth_failures: 401 and 403 responses.
        latency: `upstream_rq_time` histogram: upper bound (ms) → cumulative count.
        latency_samples: how many requests the histogram counted.
    """

    requests: int = 0
    server_errors: int = 0
    auth_failures: int = 0
    latency: dict[float, int] = field(default_factory=dict)
    latency_samples: int = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.server_errors += other.server_errors
        self.auth_failures += other.auth_failures
        self.latency_samples += other.latency_samples
        for bound, count in other.latency.items():
            self.latency[bound] = self.latency.get(bound, 0) + count

    def quantile_ms(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile (None: no samples;
        inf: beyond the largest bucket)."""
        if self.latency_samples <= 0:
            return None
        want = q * self.latency_samples
        for bound in sorted(self.latency):
            if self.latency[bound] >= want:
                return bound
        return math.inf

    def to_list(self) -> list[object]:
        return [self.requests, self.server_errors, self.auth_failures, self.latency_samples,
                [[b, c] for b, c in sorted(self.latency.items()) if c]]

    @classmethod
    def from_list(cls, raw: list[object]) -> Counts:
        requests, errors, auth, samples, buckets = raw
        return cls(int(requests), int(errors), int(auth),  # type: ignore[call-overload]
                   {float(b): int(c) for b, c in buckets},  # type: ignore[attr-defined]
                   int(samples))  # type: ignore[call-overload]


Slots = dict[int, dict[str, Counts]]
"""Second (since the epoch) → cluster → counts received in that second."""


class Window:
    """This replica's recent slots. Not thread-safe: use it from one event loop."""

    def __init__(self, *, retention_s: int = RETENTION_S) -> None:
        self._retention = retention_s
        self.slots: Slots = {}

    def add(self, now: float, counts: Mapping[str, Counts]) -> None:
        """Add what arrived at `now`, and drop slots older than the retention."""
        if not counts:
            return
        slot = self.slots.setdefault(int(now // SLOT_S) * SLOT_S, {})
        for cluster, c in counts.items():
            slot.setdefault(cluster, Counts()).add(c)
        self.prune(now)

    def prune(self, now: float) -> None:
        oldest = now - self._retention
        for second in [s for s in self.slots if s < oldest]:
            del self.slots[second]


def total(slots: Iterable[Slots], cluster: str, *, start: float, end: float) -> Counts:
    """The counts of `cluster` in every slot that overlaps [start, end], over all reports."""
    out = Counts()
    for report in slots:
        for second, clusters in report.items():
            if second + SLOT_S > start and second <= end and cluster in clusters:
                out.add(clusters[cluster])
    return out


def encode(slots: Slots) -> bytes:
    """A compact document for etcd: {second: {cluster: [req, 5xx, auth, n, buckets]}}."""
    doc = {str(s): {c: counts.to_list() for c, counts in sorted(clusters.items())}
           for s, clusters in sorted(slots.items())}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(raw: bytes) -> Slots:
    doc = json.loads(raw)
    return {int(s): {c: Counts.from_list(v) for c, v in clusters.items()}
            for s, clusters in doc.items()}
