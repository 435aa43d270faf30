"""A real grpc.aio xDS server on port 0 and a real ADS client, for feature tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from controlplane.xds.budget import PushBudget
from controlplane.xds.cache import MAX_UNCONFIGURED_GROUPS, SnapshotCache
from controlplane.xds.peers import MAX_STREAMS_PER_PEER, peer_key
from controlplane.xds.proxies import ProxyRegistry
from controlplane.xds.server import MAX_STREAMS, AggregatedDiscoveryServer
from controlplane.xds.stream import GroupOf, node_cluster


@dataclass
class XdsHarness:
    """A running xDS server and its collaborators."""

    cache: SnapshotCache
    registry: ProxyRegistry
    server: grpc.aio.Server
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def xds_server(
    *, ready: bool = True, group_of: GroupOf = node_cluster, host: str = "127.0.0.1", port: int = 0,
    max_streams: int = MAX_STREAMS, budget: PushBudget | None = None,
    max_unconfigured_groups: int = MAX_UNCONFIGURED_GROUPS,
    max_streams_per_peer: int = MAX_STREAMS_PER_PEER,
    peer_of: Callable[[Any], str | None] = peer_key,
) -> AsyncIterator[XdsHarness]:
    """Start ADS + SDS on `host:port` (0: any free port); `ready=False` leaves the cache unready."""
    cache = SnapshotCache(max_unconfigured_groups=max_unconfigured_groups)
    if ready:
        cache.mark_ready()
    registry = ProxyRegistry()
    server = grpc.aio.server()
    AggregatedDiscoveryServer(cache, registry, group_of=group_of, max_streams=max_streams,
                              budget=budget, max_streams_per_peer=max_streams_per_peer,
                              peer_of=peer_of).add_to_server(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    try:
        yield XdsHarness(cache, registry, server, bound)
    finally:
        await server.stop(None)


def node(node_id: str = "proxy-1", group: str = "edge") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster=group)


class AdsClient:
    """One ADS stream (SotW or Delta) with a background reader and timed receives."""

    def __init__(self, target: str, *, delta: bool = False, read: bool = True,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        """`read=False`: never read responses (a client that stalls the server's writes);
        `credentials`: TLS (e.g. a proxy's client certificate) instead of plaintext."""
        self.target = target
        self.delta = delta
        self.read = read
        self.credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.error: grpc.RpcError | None = None

    async def __aenter__(self) -> AdsClient:
        self._channel = (grpc.aio.insecure_channel(self.target) if self.credentials is None
                         else grpc.aio.secure_channel(self.target, self.credentials))
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._call = (stub.DeltaAggregatedResources() if self.delta
                      else stub.StreamAggregatedResources())
        if self.read:
            self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._responses.put_nowait(response)
        except grpc.RpcError as exc:
            self.error = exc

    async def send(self, request: Any) -> None:
        await self._call.write(request)

    async def request(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        version: str = "",
        nonce: str = "",
        error: str | None = None,
        node: base_pb2.Node | None = None,
    ) -> None:
        """Send a SotW DiscoveryRequest."""
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version,
            response_nonce=nonce,
        )
        if node is not None:
            req.node.CopyFrom(node)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.send(req)

    async def delta_request(
        self,
        type_url: str,
        *,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        initial: Mapping[str, str] | None = None,
        nonce: str = "",
        error: str | None = None,
        node: base_pb2.Node | None = None,
    ) -> None:
        """Send a DeltaDiscoveryRequest."""
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            initial_resource_versions=dict(initial or {}),
            response_nonce=nonce,
        )
        if node is not None:
            req.node.CopyFrom(node)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.send(req)

    async def ack(self, response: Any, *, names: Iterable[str] = ()) -> None:
        """ACK a response (SotW: repeats `names`; Delta: nonce only)."""
        if self.delta:
            await self.delta_request(response.type_url, nonce=response.nonce)
        else:
            await self.request(response.type_url, names, version=response.version_info,
                               nonce=response.nonce)

    async def ack_all(self, node: base_pb2.Node, type_urls: Iterable[str]) -> None:
        """Subscribe to every resource of each type as `node` and ACK every response,
        whatever it holds, until closed: a client that claims to carry any config."""
        first, *others = type_urls
        # The others only once the first is answered: a refused stream is ended after
        # its first request, and a write after that would fail on the client's side.
        response = await self._subscribe(first, node)
        for type_url in others:
            await self._subscribe(type_url, None)
        while True:
            await self.ack(response)
            response = await self.recv(timeout=3600)

    async def _subscribe(self, type_url: str, node: base_pb2.Node | None) -> Any:
        if self.delta:
            await self.delta_request(type_url, node=node)
        else:
            await self.request(type_url, node=node)
        return await self.recv(timeout=3600) if node is not None else None

    async def recv(self, timeout: float = 5.0) -> Any:
        """The next response; TimeoutError if none arrives in time."""
        async with asyncio.timeout(timeout):
            return await self._responses.get()

    async def silent_for(self, seconds: float) -> bool:
        """True if no response arrives within `seconds` (a bounded wait, not a sleep-and-hope)."""
        try:
            async with asyncio.timeout(seconds):
                response = await self._responses.get()
        except TimeoutError:
            return True
        self._responses.put_nowait(response)
        return False
