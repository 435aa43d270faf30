"""The plumbing under every xDS stream: identifying the proxy, limits, one event queue.

A stream's requests (read by a reader task) and its group's snapshot changes
(the cache's subscription callback) go into one queue that the stream's own
task drains, so per-stream state is only ever touched by that task and
responses leave in the order they were decided. Nothing here polls. The protocol
core above it is `core`; what an idle stream holds is kept small (slots, what is
rarely needed made when first needed, no request kept once applied): thousands of
streams each hold it for as long as they live.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from google.protobuf.message import DecodeError

from controlplane.errors import (
    AuthenticationError,
    ControlPlaneError,
    InvalidInputError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from controlplane.xds.budget import PushBudget
from controlplane.xds.cache import SnapshotSource
from controlplane.xds.identity import peer_node, peer_serial
from controlplane.xds.loglimit import LogLimiter, clip
from controlplane.xds.observer import NO_OBSERVER, XdsObserver
from controlplane.xds.proxies import ProxyHandle, ProxyRegistry
from controlplane.xds.resources import SECRET
from controlplane.xds.snapshot import Snapshot

log = logging.getLogger(__name__)

GroupOf = Callable[[base_pb2.Node, grpc.aio.ServicerContext[Any, Any]], str]
"""Maps a stream's node (and its gRPC context, e.g. the mTLS peer) to a proxy group.

It may raise AuthenticationError or PermissionDeniedError to refuse the stream,
or InvalidInputError for a node it cannot place.
"""


def node_cluster(node: base_pb2.Node, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The default `GroupOf`: the node's `cluster` field.

    Errors:
        InvalidInputError: node.cluster is empty.
    """
    del context
    if not node.cluster:
        raise InvalidInputError("node.cluster is empty: set it to the proxy group")
    return str(node.cluster)


@dataclass(frozen=True)
class StreamDeps:
    """The collaborators every stream uses."""

    cache: SnapshotSource
    registry: ProxyRegistry
    group_of: GroupOf = node_cluster
    observer: XdsObserver = NO_OBSERVER
    budget: PushBudget = field(default_factory=PushBudget)
    refusals: LogLimiter = field(default_factory=LogLimiter)
    """Lines about refused streams, across streams: a refused client may retry at once."""


class _Event(enum.Enum):
    SNAPSHOT = "snapshot"
    END = "end"
    MALFORMED = "malformed"
    REVOKED = "revoked"


MAX_IDENTITY_BYTES = 256
"""The longest node.id and node.cluster accepted: each is held per stream, written into
the fleet report in etcd and printed in logs, so neither may be as large as a client
likes (etcd refuses a request over 1.5 MiB, and a report it refuses is no report)."""

MAX_TYPES_PER_STREAM = 32
"""A stream asking for more distinct type URLs than this is not answered for the extra ones."""

MAX_NAMES_PER_TYPE = 100_000
"""More resource names than this in one type's subscription ends the stream with
RESOURCE_EXHAUSTED: what a stream keeps per name is held for as long as it lives, so
without a bound one client could make the server hold any amount of memory."""

MAX_SECRET_NAMES = 1_000
"""`MAX_NAMES_PER_TYPE` for SDS: a group's proxies name a few secrets each (its
certificate, the CA, its credentials), and each name a group lacks is logged."""

MAX_NEW_NAMES_FACTOR = 10
"""A stream may subscribe, over its life, at most this many times its type's name limit
in names it did not subscribe before (counted as they come, not remembered): a client
naming fresh names every round ends with RESOURCE_EXHAUSTED, a proxy whose config
changes now and then never comes near."""

MAX_QUEUED_REQUESTS = 64
"""Requests read ahead of the stream's task at most. Past this the reader stops reading
and gRPC's flow control holds the client back: a client that floods requests while not
reading its responses (so the task waits in a write) cannot make the server hold any
amount of them. Envoy sends one request per response: it never comes near."""

Req = TypeVar("Req")
T = TypeVar("T")


class _Inbox(Generic[T]):
    """A queue with one consumer: a list and a future (an asyncio.Queue holds three
    deques and an Event, ~3 KB, and one deque alone ~600 bytes, for each of thousands
    of streams; a list of at most `limit` items is as fast here). `put` waits while
    `limit` items are queued; `put_nowait` and `put_once` never wait."""

    __slots__ = ("_items", "_limit", "_room", "_waiter")

    def __init__(self, limit: int = MAX_QUEUED_REQUESTS) -> None:
        self._items: list[T] = []
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def put_once(self, item: T) -> None:
        """`put_nowait(item)` unless `item` (the same object) is queued already."""
        if not any(queued is item for queued in self._items):
            self.put_nowait(item)

    async def put(self, item: T) -> None:
        """Queue `item`, then wait until fewer than `limit` items are queued."""
        self.put_nowait(item)
        while len(self._items) >= self._limit:
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None

    @property
    def idle(self) -> bool:
        """Whether the consumer waits in `get` with nothing queued."""
        return self._waiter is not None and not self._waiter.done() and not self._items

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.pop(0)
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        return item


class Stream(Generic[Req]):
    """The skeleton of one xDS stream; subclasses implement the protocol.

    Subclasses implement `on_request` (a request, after the proxy is known
    and the cache is ready) and `on_snapshot` (the group's snapshot changed).
    """

    __slots__ = ("_after_change", "_end_code", "_end_reason", "_input_log", "_nack_log",
                 "_new_names", "_nonces", "_queue", "_subscribed", "_wanted", "context",
                 "deps", "group", "handle", "snapshot")
    protocol = ""

    def __init__(self, deps: StreamDeps, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.deps = deps
        self.context = context
        self.handle: ProxyHandle | None = None
        self.group = ""
        self.snapshot: Snapshot | None = None
        self._nonces = 0
        self._after_change = False
        self._end_reason = ""
        self._end_code = grpc.StatusCode.UNAUTHENTICATED
        self._queue: _Inbox[Any] | None = None
        self._wanted = False  # counted in the cache's streams of `group`: release at end
        self._subscribed = False  # to the cache's changes of `group`: unsubscribe at end
        self._new_names: dict[str, int] | None = None  # type URL -> names newly subscribed
        self._nack_log: LogLimiter | None = None
        self._input_log: LogLimiter | None = None

    @property
    def nack_log(self) -> LogLimiter:
        """Lines about NACKs: their text is the client's."""
        if self._nack_log is None:
            self._nack_log = LogLimiter()
        return self._nack_log

    @property
    def input_log(self) -> LogLimiter:
        """Lines about other client input (unserved types)."""
        if self._input_log is None:
            self._input_log = LogLimiter()
        return self._input_log

    def next_nonce(self) -> str:
        """A nonce unique within this stream."""
        self._nonces += 1
        return str(self._nonces)

    async def on_request(self, request: Req) -> None:
        """Apply one request (the proxy is identified and the cache ready); maybe respond."""
        raise NotImplementedError

    async def on_snapshot(self) -> None:
        """`self.snapshot` changed: push what each subscribed type now lacks, in order."""
        raise NotImplementedError

    def acked_inline(self, request: Req) -> bool:
        """Record `request` now if it is an ACK `on_request` would only record (no
        response, no change of subscription); False: leave it to `on_request`. Called
        only while the stream's task waits for work, so the two never interleave."""
        del request
        return False

    async def check_names(self, type_url: str, count: int, added: int = 0) -> None:
        """End the stream (RESOURCE_EXHAUSTED) if `count` names of a type are too many, or
        if with `added` names it did not subscribe before, the stream has subscribed too
        many new names of the type over its life."""
        limit = max_names(type_url)
        if count > limit:
            log.warning("refusing xDS stream from %s: %d resource names for %s (at most %d)",
                        self.context.peer(), count, clip(type_url), limit)
            await self.context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{count} resource names subscribed for {clip(type_url)}: at most "
                f"{limit} per type")
        if not added:
            return
        if self._new_names is None:
            self._new_names = {}
        new = self._new_names[type_url] = self._new_names.get(type_url, 0) + added
        if new > limit * MAX_NEW_NAMES_FACTOR:
            log.warning("ending xDS stream from %s: %d new resource names subscribed for %s "
                        "over its life (at most %d)", self.context.peer(), new,
                        clip(type_url), limit * MAX_NEW_NAMES_FACTOR)
            await self.context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{new} different resource names subscribed for {clip(type_url)} on this "
                f"stream: at most {limit * MAX_NEW_NAMES_FACTOR} over a stream's life; "
                "reconnect if the config really changed that much")

    async def write(self, parts: Sequence[bytes], type_url: str, version: str) -> None:
        """Send one serialized response (`parts` joined, see `wire`) of `version` of a
        type, within the push budget; the caller has already updated its state."""
        async def send() -> None:
            # Joined only now: a copy per stream exists only while it is being written.
            await self.context.write(parts[0] if len(parts) == 1 else b"".join(parts))

        await self.deps.budget.write(sum(map(len, parts)), send)
        self.deps.observer.pushed(self.group, type_url, version,
                                  after_change=self._after_change)

    async def run(self, requests: AsyncIterator[Req]) -> None:
        """Serve the stream until the client closes it or goes away."""
        queue: _Inbox[Req | _Event] = _Inbox()
        self._queue = queue
        tasks = [asyncio.create_task(self._read(requests, queue), name="xds-read")]
        try:
            # The item lives only in `_apply`'s frame: an idle stream holds no request
            # (a parsed request holds ~1 KB of upb arena, a first one with Envoy's
            # extensions ~100 KB).
            while await self._apply(await queue.get()):
                pass
        finally:
            # Synchronous clean-up first: gRPC may cancel this task again while
            # it waits for its helpers below, and the registry must not leak.
            if self._subscribed:
                self._subscribed = False
                self.deps.cache.unsubscribe(self.group, self._snapshot_changed)
            if self._wanted:
                self._wanted = False
                self.deps.cache.release(self.group)
            self._queue = None  # no cycle stream -> handle -> stream outlives the stream
            if self.handle is not None:
                self.handle.on_end = None
                self.handle.close()
                self.deps.observer.disconnected(self.group)
                log.debug("%s stream %d ended", self.protocol, self.handle.stream_id)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    log.error("xDS stream helper task failed", exc_info=task.exception())

    async def _apply(self, item: Req | _Event) -> bool:
        """Apply one item of the inbox; False: the stream ends."""
        if item is _Event.END:
            return False
        if item is _Event.MALFORMED:
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed xDS request")
            return False  # abort() raises; this is for the type checker
        if item is _Event.REVOKED:
            log.warning("ending xDS stream of node %r (group %r): %s",
                        self.handle.node_id if self.handle else "?", self.group,
                        self._end_reason)
            await self.context.abort(self._end_code, self._end_reason)
            return False
        if item is _Event.SNAPSHOT:
            latest = self.deps.cache.get(self.group)
            if latest is not None and latest is not self.snapshot:
                self.snapshot = latest
                self._after_change = True
                try:
                    await self.on_snapshot()
                finally:
                    self._after_change = False
            return True
        if self.handle is None:
            await self._identify(item)
            # Subscribed right after the snapshot was read (no await between): no change
            # can slip through.
            self.deps.cache.subscribe(self.group, self._snapshot_changed)
            self._subscribed = True
        await self.on_request(item)
        return True

    def _snapshot_changed(self) -> None:
        if self._queue is not None:
            self._queue.put_once(_Event.SNAPSHOT)

    async def _identify(self, first: Any) -> None:
        """Place the proxy in its group from the first request's node, then wait for config."""
        node = first.node
        try:
            _check_identity(node)
            self.group = self.deps.group_of(node, self.context)
            # Counted before anything is kept for the group: a name past the cap costs
            # nothing (the cache would hold its snapshot, telemetry its labels).
            self.deps.cache.want(self.group)
            self._wanted = True
            self.handle = self.deps.registry.connect(
                node_id=node.id,
                group=self.group,
                protocol=self.protocol,
                peer=self.context.peer(),
                build_version=_build_version(node),
                extensions=self.deps.registry.shared_by_key(
                    _build_key(node), lambda: [e.name for e in node.extensions]),
                peer_serial=peer_serial(self.context),
                # A certificate issued for this node id: the identity's own proof.
                node_bound=bool(node.id) and peer_node(self.context) == node.id,
            )
        except (AuthenticationError, PermissionDeniedError, InvalidInputError,
                ResourceExhaustedError) as exc:
            code = {
                AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
                PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
                ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
            }.get(type(exc), grpc.StatusCode.INVALID_ARGUMENT)
            if (note := self.deps.refusals.allow()) is not None:
                log.warning("refusing xDS stream from %s: %s%s", self.context.peer(),
                            clip(str(exc), 1024), note)
            await self.context.abort(code, str(exc))
        except ControlPlaneError as exc:
            await self.context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        assert self.handle is not None  # abort() raised otherwise
        self.handle.on_end = self._end
        self.deps.observer.connected(self.group)
        log.info("%s stream %d: node %r group %r from %s", self.protocol,
                 self.handle.stream_id, node.id, self.group, self.handle.peer)
        await self.deps.cache.wait_ready()
        self.snapshot = self.deps.cache.get(self.group)

    def _end(self, reason: str, why: str) -> None:
        """Asked from outside: a revoked certificate (`ProxyRegistry.end_streams`) aborts
        with UNAUTHENTICATED, a newer stream of the same proxy with ABORTED."""
        self._end_reason = reason
        self._end_code = (grpc.StatusCode.ABORTED if why == "replaced"
                          else grpc.StatusCode.UNAUTHENTICATED)
        if self._queue is not None:
            self._queue.put_once(_Event.REVOKED)

    async def _read(self, requests: AsyncIterator[Req], queue: _Inbox[Req | _Event]) -> None:
        try:
            async for request in requests:
                # Most requests are ACKs that need no answer: recorded here when the
                # stream's task has nothing else to do, they cost it no wake-up.
                if not (queue.idle and self.handle is not None and self.acked_inline(request)):
                    await queue.put(request)
                del request  # not held while the next one is awaited
        except (grpc.RpcError, grpc.aio.AbortError) as exc:  # AbortError: the task aborted
            log.debug("xDS stream read ended: %s", exc)
        except DecodeError as exc:
            log.warning("malformed xDS request from %s: %s", self.context.peer(), exc)
            queue.put_nowait(_Event.MALFORMED)
        finally:
            queue.put_nowait(_Event.END)


def max_names(type_url: str) -> int:
    """The most resource names of `type_url` one subscription may hold."""
    return MAX_SECRET_NAMES if type_url == SECRET else MAX_NAMES_PER_TYPE


def _check_identity(node: base_pb2.Node) -> None:
    """Errors:
        InvalidInputError: node.id or node.cluster is longer than `MAX_IDENTITY_BYTES`.
    """
    for name, value in (("node.id", node.id), ("node.cluster", node.cluster)):
        size = len(value.encode())
        if size > MAX_IDENTITY_BYTES:
            raise InvalidInputError(f"{name} is {size} bytes: at most {MAX_IDENTITY_BYTES}")


def _build_key(node: base_pb2.Node) -> bytes:
    """The node without what differs between proxies of one build (identity, placement)."""
    build = base_pb2.Node()
    build.CopyFrom(node)
    for name in ("id", "cluster", "metadata", "locality", "dynamic_parameters"):
        build.ClearField(name)
    key: bytes = build.SerializeToString(deterministic=True)
    return key


def _build_version(node: base_pb2.Node) -> str:
    if not node.HasField("user_agent_build_version"):
        return ""
    v = node.user_agent_build_version.version
    return f"{v.major_number}.{v.minor_number}.{v.patch}"
