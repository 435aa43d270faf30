"""Envoy's MetricsService push (`envoy.stat_sinks.metrics_service`) into a `Window`.

xds-protos lacks `envoy.service.metrics.v3`, so the RPC is a generic grpcio handler on raw
bytes. A flush is ~50 KB and ~500 metric families, and envoy-data-plane (betterproto2)
parses slowly: `families` walks the message's wire format and parses only the three
families analysis reads; everything else (the node identifier, gauges, other
counters) is skipped by length.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

import grpc

from controlplane.analysis.decide import CLUSTER_SEPARATOR
from controlplane.analysis.health import HealthBoard
from controlplane.analysis.window import Counts, Window

with warnings.catch_warnings():
    # envoy-data-plane's generated validators trip pydantic deprecation warnings on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from envoy_data_plane.io.prometheus.client import Metric, MetricFamily

log = logging.getLogger(__name__)

SERVICE = "envoy.service.metrics.v3.MetricsService"
METHOD = "StreamMetrics"

RQ_CLASS = "cluster.upstream_rq_xx"
RQ_CODE = "cluster.upstream_rq"
RQ_TIME = "cluster.upstream_rq_time"
HEALTHY = "cluster.membership_healthy"
MEMBERS = "cluster.membership_total"
_WANTED = frozenset({RQ_CLASS.encode(), RQ_CODE.encode(), RQ_TIME.encode()})
_GAUGES = frozenset({HEALTHY.encode(), MEMBERS.encode()})
_CLUSTER = "envoy.cluster_name"
_CLASS = "envoy.response_code_class"
_CODE = "envoy.response_code"
_AUTH_CODES = frozenset({"401", "403"})
_FAMILIES_FIELD = 2  # StreamMetricsMessage.envoy_metrics
_NAME_FIELD = 1  # MetricFamily.name


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip(buf: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(buf, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        length, pos = _varint(buf, pos)
        return pos + length
    if wire == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire}")


def _name_of(buf: bytes, start: int, end: int) -> bytes | None:
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        if key >> 3 == _NAME_FIELD and key & 7 == 2:
            length, pos = _varint(buf, pos)
            return buf[pos:pos + length]
        pos = _skip(buf, pos, key & 7)
    return None


def families(raw: bytes, wanted: frozenset[bytes] = _WANTED) -> Iterator[MetricFamily]:
    """The metric families named in `wanted` of one serialized StreamMetricsMessage."""
    pos, end = 0, len(raw)
    while pos < end:
        key, pos = _varint(raw, pos)
        if key >> 3 == _FAMILIES_FIELD and key & 7 == 2:
            length, pos = _varint(raw, pos)
            if _name_of(raw, pos, pos + length) in wanted:
                yield MetricFamily.parse(raw[pos:pos + length])
            pos += length
        else:
            pos = _skip(raw, pos, key & 7)


def counts_of(raw: bytes) -> dict[str, Counts]:
    """Per-cluster counts in one flush (counters are deltas since the last flush), for
    upstream-version clusters (`upstream|version`) only."""
    return _counts(families(raw))


def read_flush(raw: bytes) -> tuple[dict[str, Counts], dict[str, tuple[int, int]]]:
    """One flush's request counts and endpoint membership (healthy, total) per
    upstream-version cluster, in one walk over the message."""
    wanted = list(families(raw, _WANTED | _GAUGES))
    return (_counts(f for f in wanted if f.name not in (HEALTHY, MEMBERS)),
            _membership(f for f in wanted if f.name in (HEALTHY, MEMBERS)))


def _membership(found: Iterable[MetricFamily]) -> dict[str, tuple[int, int]]:
    healthy: dict[str, int] = {}
    members: dict[str, int] = {}
    for family in found:
        into = healthy if family.name == HEALTHY else members
        for metric in family.metric:
            cluster = _cluster_label(metric)
            if cluster is not None and metric.gauge is not None:
                into[cluster] = int(metric.gauge.value)
    return {c: (healthy.get(c, 0), total) for c, total in members.items()}


def _cluster_label(metric: Metric) -> str | None:
    for label in metric.label:
        if label.name == _CLUSTER:
            return label.value if CLUSTER_SEPARATOR in label.value else None
    return None


def _counts(found: Iterable[MetricFamily]) -> dict[str, Counts]:
    out: dict[str, Counts] = {}
    for family in found:
        for metric in family.metric:
            labels = {label.name: label.value for label in metric.label}
            cluster = labels.get(_CLUSTER)
            if cluster is None or CLUSTER_SEPARATOR not in cluster:
                continue  # not an upstream version (the xDS cluster, say)
            counts = out.setdefault(cluster, Counts())
            if family.name == RQ_TIME:
                if metric.histogram is not None:
                    counts.latency_samples += metric.histogram.sample_count
                    for bucket in metric.histogram.bucket:
                        bound = float(bucket.upper_bound)
                        counts.latency[bound] = (counts.latency.get(bound, 0)
                                                 + bucket.cumulative_count)
                continue
            value = int(metric.counter.value) if metric.counter is not None else 0
            if family.name == RQ_CLASS:
                counts.requests += value
                if labels.get(_CLASS) == "5":
                    counts.server_errors += value
            elif labels.get(_CODE) in _AUTH_CODES:
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
