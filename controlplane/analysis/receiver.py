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
from controlplane.analysis.admission import MAX_NAME_BYTES, Admission, Identify, Sender
from controlplane.analysis.decide import CLUSTER_SEPARATOR
from controlplane.analysis.health import HealthBoard
from controlplane.analysis.window import Counts, Window
from controlplane.errors import (
    AuthenticationError,
    ControlPlaneError,
    FieldError,
    InvalidInputError,
    PermissionDeniedError,
)

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
    """Serves `StreamMetrics`: adds every admitted flush's counts to `window` and keeps
    each stream's latest endpoint membership on `health` (one event loop).

    A stream is authenticated on its first message (`identify`, from the identifier's
    node and the transport) and refused when that fails; each flush then goes through
    `admission` (see `admission`): a revoked certificate ends the stream, a sender that
    is not a connected proxy is ignored, clusters of other groups are dropped.
    """

    def __init__(self, window: Window, *, identify: Identify, admission: Admission,
                 health: HealthBoard | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.health = health if health is not None else HealthBoard()
        self._identify = identify
        self._admission = admission
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
        sender: Sender | None = None
        try:
            async for raw in requests:
                if sender is None:
                    sender = await self._authenticate(raw, context)
                if self._admission.revoked(sender):  # since the stream began, or before
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, (
                        f"this client certificate (serial {sender.serial}) was revoked: "
                        "issue a new one with `controlplane cert issue`"))
                try:
                    counts, membership = read_flush(raw)
                except (ValueError, IndexError) as exc:  # a malformed message: skip it
                    log.warning("metrics from %s: unreadable message: %s", context.peer(), exc)
                    continue
                if not self._admission.counts(sender):
                    self.health.drop(stream)  # what it said while connected goes too
                    continue
                counts, membership = self._admission.routed(sender, counts, membership)
                now = self._clock()
                self.window.add(now, counts)
                self.health.update(stream, now, membership)
        finally:
            self.health.drop(stream)  # a gone proxy's view no longer counts
        return b""  # StreamMetricsResponse is empty

    async def _authenticate(self, raw: bytes,
                            context: grpc.aio.ServicerContext[bytes, bytes]) -> Sender:
        """The stream's sender from its first message, or the stream is aborted."""
        code, problem = grpc.StatusCode.INVALID_ARGUMENT, ""
        try:
            node_id, cluster = _claimed_node(raw)
            return self._identify(node_id, cluster, context)
        except AuthenticationError as exc:
            code, problem = grpc.StatusCode.UNAUTHENTICATED, str(exc)
        except PermissionDeniedError as exc:
            code, problem = grpc.StatusCode.PERMISSION_DENIED, str(exc)
        except ControlPlaneError as exc:
            problem = str(exc)
        log.warning("refusing a metrics stream from %s: %s", context.peer(), problem)
        await context.abort(code, f"metrics stream refused: {problem}")
        raise AssertionError("context.abort returned")  # it raises; mypy cannot know


def _claimed_node(raw: bytes) -> tuple[str, str]:
    """The node id and cluster the first message's identifier claims.

    Errors:
        InvalidInputError: no identifier, an empty or too long (MAX_NAME_BYTES) node id or
            cluster, or bytes that are not UTF-8 or not a StreamMetricsMessage.
    """
    try:
        found = wire.identifier(raw)
    except (ValueError, IndexError) as exc:
        raise InvalidInputError([FieldError(
            "StreamMetricsMessage", f"unreadable: {exc}")]) from exc
    if found is None:
        raise InvalidInputError([FieldError(
            "identifier.node", "the stream's first message must carry the node (id and "
                               "cluster), as Envoy's metrics_service sink sends it")])
    names: list[str] = []
    for field, value in (("identifier.node.id", found.node_id),
                         ("identifier.node.cluster", found.cluster)):
        if len(value) > MAX_NAME_BYTES:
            raise InvalidInputError([FieldError(
                field, f"{len(value)} bytes, longer than {MAX_NAME_BYTES}")])
        try:
            names.append(value.decode())
        except UnicodeDecodeError as exc:
            raise InvalidInputError([FieldError(field, "not UTF-8")]) from exc
    if not names[0]:
        raise InvalidInputError([FieldError("identifier.node.id", "empty: set the node id")])
    return names[0], names[1]
