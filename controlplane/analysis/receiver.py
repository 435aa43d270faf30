"""Envoy's MetricsService push (`envoy.stat_sinks.metrics_service`) into a `Window`.

xds-protos lacks `envoy.service.metrics.v3`, so the RPC is a generic grpcio handler on raw
bytes, and `wire` reads only the families analysis needs out of them (request counts
and latency for the window, endpoint membership for health gates).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

import grpc

from controlplane.analysis import wire
from controlplane.analysis.decide import CLUSTER_SEPARATOR
from controlplane.analysis.health import HealthBoard
from controlplane.analysis.window import Counts, Window

log = logging.getLogger(__name__)

SERVICE = "envoy.service.metrics.v3.MetricsService"
METHOD = "StreamMetrics"

RQ_CLASS = "cluster.upstream_rq_xx"
RQ_CODE = "cluster.upstream_rq"
RQ_TIME = "cluster.upstream_rq_time"
HEALTHY = "cluster.membership_healthy"
MEMBERS = "cluster.membership_total"
_WANTED = frozenset({RQ_CLASS, RQ_CODE, RQ_TIME})
_GAUGES = frozenset({HEALTHY, MEMBERS})
_CLUSTER = "envoy.cluster_name"
_CLASS = "envoy.response_code_class"
_CODE = "envoy.response_code"
_AUTH_CODES = frozenset({"401", "403"})


def families(raw: bytes, wanted: frozenset[str] = _WANTED) -> Iterator[wire.Family]:
    """The metric families named in `wanted` of one serialized StreamMetricsMessage."""
    return wire.families(raw, wanted)


def counts_of(raw: bytes) -> dict[str, Counts]:
    """Per-cluster counts in one flush (counters are deltas since the last flush), for
    upstream-version clusters (`upstream|version`) only."""
    return _counts(families(raw))


def read_flush(raw: bytes) -> tuple[dict[str, Counts], dict[str, tuple[int, int]]]:
    """One flush's request counts and endpoint membership (healthy, total) per
    upstream-version cluster, in one walk over the message."""
    found = list(families(raw, _WANTED | _GAUGES))
    return (_counts(f for f in found if f.name in _WANTED),
            _membership(f for f in found if f.name in _GAUGES))


def _version_cluster(sample: wire.Sample) -> str | None:
    cluster = sample.labels.get(_CLUSTER)
    return cluster if cluster is not None and CLUSTER_SEPARATOR in cluster else None


def _membership(found: Iterable[wire.Family]) -> dict[str, tuple[int, int]]:
    healthy: dict[str, int] = {}
    members: dict[str, int] = {}
    for family in found:
        into = healthy if family.name == HEALTHY else members
        for sample in family.samples:
            cluster = _version_cluster(sample)
            if cluster is not None and sample.gauge is not None:
                into[cluster] = int(sample.gauge)
    return {c: (healthy.get(c, 0), total) for c, total in members.items()}


def _counts(found: Iterable[wire.Family]) -> dict[str, Counts]:
    out: dict[str, Counts] = {}
    for family in found:
        for sample in family.samples:
            cluster = _version_cluster(sample)
            if cluster is None:
                continue  # not an upstream version (the xDS cluster, say)
            counts = out.setdefault(cluster, Counts())
            if family.name == RQ_TIME:
                counts.latency_samples += sample.sample_count
                for bound, count in sample.buckets:
                    counts.latency[bound] = counts.latency.get(bound, 0) + count
                continue
            value = int(sample.counter or 0)
            if family.name == RQ_CLASS:
                counts.requests += value
                if sample.labels.get(_CLASS) == "5":
                    counts.server_errors += value
            elif sample.labels.get(_CODE) in _AUTH_CODES:
                counts.auth_failures += value
    return {c: v for c, v in out.items() if v.requests or v.latency_samples}


class MetricsReceiver:
    """Serves `StreamMetrics`: adds every flush's counts to `window` and keeps each
    stream's latest endpoint membership on `health` (one event loop)."""

    def __init__(self, window: Window, *, health: HealthBoard | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.health = health if health is not None else HealthBoard()
        self._clock = clock
        self._streams = 0

    def add_to_server(self, server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            METHOD: grpc.stream_unary_rpc_method_handler(self._stream),
        })
        server.add_generic_rpc_handlers((handler,))

    async def _stream(self, requests: AsyncIterator[bytes],
                      context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self._streams += 1
        stream = self._streams
        try:
            async for raw in requests:
                try:
                    counts, membership = read_flush(raw)
                except (ValueError, IndexError) as exc:  # a malformed message: skip it
                    log.warning("metrics from %s: unreadable message: %s", context.peer(), exc)
                    continue
                now = self._clock()
                self.window.add(now, counts)
                self.health.update(stream, now, membership)
        finally:
            self.health.drop(stream)  # a gone proxy's view no longer counts
        return b""  # StreamMetricsResponse is empty
