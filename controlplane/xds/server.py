"""The gRPC face of the xDS server: ADS (SotW + Delta) and SDS for grpc.aio.

    server = grpc.aio.server()
    xds = AggregatedDiscoveryServer(cache, registry)      # group_of=... for mTLS
    xds.add_to_server(server)                             # ADS + SDS

Every stream runs in its own task on the event loop; the protocol logic is in
`sotw` and `delta` over their shared core (`core`), the plumbing in `stream`.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeAlias

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.errors import ControlPlaneError
from controlplane.xds import wire
from controlplane.xds.budget import PushBudget
from controlplane.xds.cache import SnapshotSource
from controlplane.xds.delta import DeltaStream
from controlplane.xds.denials import SecretDenials
from controlplane.xds.observer import NO_OBSERVER, XdsObserver
from controlplane.xds.peers import MAX_STREAMS_PER_PEER, peer_key
from controlplane.xds.proxies import ProxyRegistry
from controlplane.xds.resources import SECRET
from controlplane.xds.sotw import SotwStream
from controlplane.xds.stream import (
    MAX_SECRET_NAMES,
    ContextReads,
    GroupOf,
    StreamDeps,
    node_cluster,
)

log = logging.getLogger(__name__)

_ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_SDS = "envoy.service.secret.v3.SecretDiscoveryService"

MAX_STREAMS = 20_000
"""Default cap on streams served at once by one server (a few KB to ~60 KB each)."""

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class AggregatedDiscoveryServer:
    """Servicer of envoy.service.discovery.v3.AggregatedDiscoveryService and
    envoy.service.secret.v3.SecretDiscoveryService.

    Args:
        cache: where snapshots come from (a `SnapshotCache`).
        registry: where connected streams and their ACK state are recorded.
        group_of: maps (node, context) to the proxy group; default node.cluster.
        observer: told of connections, pushes, ACKs and NACKs (metrics); default none.
        max_streams: streams served at once; one more is refused with RESOURCE_EXHAUSTED
            (each holds a task and per-type state: memory stays bounded
            whatever clients open, identified or not).
        budget: bytes of responses written at once across streams (`PushBudget`);
            default 256 MiB.
        max_streams_per_peer: streams one peer (`peer_of`) holds at once; one more from
            it is refused with RESOURCE_EXHAUSTED while other peers are served.
        peer_of: the peer a stream counts against, None for none (`peers.peer_key`:
            the client certificate, else the source address; plaintext loopback exempt).
    """

    def __init__(
        self,
        cache: SnapshotSource,
        registry: ProxyRegistry,
        *,
        group_of: GroupOf = node_cluster,
        observer: XdsObserver = NO_OBSERVER,
        max_streams: int = MAX_STREAMS,
        budget: PushBudget | None = None,
        max_streams_per_peer: int = MAX_STREAMS_PER_PEER,
        peer_of: Callable[[Context], str | None] = peer_key,
    ) -> None:
        self._deps = StreamDeps(cache=cache, registry=registry, group_of=group_of,
                                observer=observer, budget=budget or PushBudget())
        self._max_streams = max_streams
        self._streams = 0
        self._max_per_peer = max_streams_per_peer
        self._peer_of = peer_of
        self._by_peer: dict[str, int] = {}  # only peers with a stream open
        # One for every FetchSecrets call: what it remembers and logs is bounded across
        # calls, where a fresh one per call would log every name of every call.
        self._fetch_denials = SecretDenials()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register ADS and SDS on a grpc.aio server (before it starts).

        StreamAggregatedResources and StreamSecrets are SotW (`sotw`),
        DeltaAggregatedResources and DeltaSecrets incremental (`delta`): SDS on its own
        stream is the same protocol as ADS. Each is `_serve` of its stream class bound
        with a partial (no wrapper coroutine: its frame would be held by every stream).
        Streams write responses already serialized (`wire`): the methods are
        registered with a serializer that passes bytes through.
        """
        sotw = discovery_pb2.DiscoveryRequest.FromString
        delta = discovery_pb2.DeltaDiscoveryRequest.FromString

        def stream(protocol: type[SotwStream | DeltaStream], parse: Any
                   ) -> grpc.RpcMethodHandler:
            return grpc.stream_stream_rpc_method_handler(
                functools.partial(self._serve, protocol), request_deserializer=parse,
                response_serializer=wire.serialize)

        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(_ADS, {
                "StreamAggregatedResources": stream(SotwStream, sotw),
                "DeltaAggregatedResources": stream(DeltaStream, delta),
            }),
            grpc.method_handlers_generic_handler(_SDS, {
                "StreamSecrets": stream(SotwStream, sotw),
                "DeltaSecrets": stream(DeltaStream, delta),
                "FetchSecrets": grpc.unary_unary_rpc_method_handler(
                    self.FetchSecrets, request_deserializer=sotw,
                    response_serializer=wire.serialize),
            }),
        ))

    async def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: Context
    ) -> discovery_pb2.DiscoveryResponse:
        """REST-style one-shot SDS: the requested secrets of the caller's group."""
        try:
            group = self._deps.group_of(request.node, context)
        except ControlPlaneError as exc:
            log.warning("refusing FetchSecrets from %s: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if len(request.resource_names) > MAX_SECRET_NAMES:
            # Not abort(): its exception, kept by gRPC, would hold the request (MBs of
            # names) in a reference cycle until a full GC.
            context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_details(f"{len(request.resource_names)} secret names requested: "
                                f"at most {MAX_SECRET_NAMES}")
            return discovery_pb2.DiscoveryResponse()
        await self._deps.cache.wait_ready()
        response = self._fetch(group, request.resource_names)
        snapshot = self._deps.cache.get(group)  # the one _fetch read: no await between
        if snapshot is not None:
            self._fetch_denials.check(node_id=request.node.id, group=group, type_url=SECRET,
                                      requested=request.resource_names,
                                      available=snapshot.resources(SECRET))
        if response is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no config for group {group!r} yet")
        return response

    async def _serve(self, protocol: type[SotwStream | DeltaStream],
                     requests: AsyncIterator[Any], context: Context) -> None:
        """Serve a stream in one of `max_streams` slots, or refuse it.

        `requests` (gRPC's request iterator) is left unused: it is an async generator
        whose frame keeps the last request while it waits for the next, ~1 KB of upb
        arena per idle stream; `ContextReads` keeps none.
        """
        del requests
        if self._streams >= self._max_streams:
            if (note := self._deps.refusals.allow()) is not None:
                log.warning("refusing xDS stream from %s: %d streams open (at most %d)%s",
                            context.peer(), self._streams, self._max_streams, note)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"this control plane serves at most {self._max_streams} "
                                "xDS streams at once; retry later or use another replica")
        peer = self._peer_of(context)
        if peer is not None and self._by_peer.get(peer, 0) >= self._max_per_peer:
            if (note := self._deps.refusals.allow()) is not None:
                log.warning("refusing xDS stream from %s: it has %d streams open (at most "
                            "%d per peer)%s", context.peer(), self._by_peer[peer],
                            self._max_per_peer, note)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"this client (its certificate, or its address without TLS) "
                                f"has {self._max_per_peer} xDS streams open, the most one "
                                "client may hold; close some, or give each proxy its own "
                                "certificate")
        self._streams += 1
        if peer is not None:
            self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
        try:
            await protocol(self._deps, context).run(ContextReads(context))
        except BaseException as exc:
            # gRPC keeps an aborted call's exception, whose traceback holds our frames and
            # their locals (a 100k-name request, a response being written) in a cycle
            # that only the cyclic GC frees, and serve runs it rarely (GC_YOUNG_THRESHOLD).
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            self._streams -= 1
            if peer is not None:
                left = self._by_peer[peer] - 1
                if left:
                    self._by_peer[peer] = left
                else:
                    del self._by_peer[peer]

    def _fetch(
        self, group: str, names: Iterable[str]
    ) -> discovery_pb2.DiscoveryResponse | None:
        snapshot = self._deps.cache.get(group)
        if snapshot is None:
            return None
        entries = snapshot.resources(SECRET)
        response = discovery_pb2.DiscoveryResponse(
            version_info=snapshot.version(SECRET), type_url=SECRET
        )
        response.resources.extend(entries[n].packed for n in sorted(set(names)) if n in entries)
        return response
