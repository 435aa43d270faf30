"""The plumbing under every xDS stream: identifying the proxy, limits, taking turns.

A stream is gRPC's handler task, which reads a request, applies it and reads the
next; while it applies one it reads nothing, so gRPC's flow control holds back a
client that floods requests (however slowly it reads its responses). A change of
the group's snapshot (the cache's callback) starts a short-lived push task. The two
take turns (`_take_turn`), so per-stream state is touched by one of them at a time
and responses leave in the order they were decided. Nothing here polls.

What an idle stream holds is kept small, because thousands of streams each hold it
as long as they live: one task and no queue, slots, no request once applied, and
what is rarely needed (log limiters, counters) made when first needed. The protocol
core above this is `core`.
"""

from __future__ import annotations

import asyncio
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

Req = TypeVar("Req")

_ENDED = "ended from outside"
"""The message of the cancellation `Stream._end` asks for (a revoked or replaced stream)."""


class ContextReads:
    """The requests of a grpc.aio stream, each read with `context.read()` when asked for,
    none kept after it is handed out."""

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    def __aiter__(self) -> ContextReads:
        return self

    async def __anext__(self) -> Any:
        request = await self._context.read()
        if request is grpc.aio.EOF:
            raise StopAsyncIteration
        return request


class Stream(Generic[Req]):
    """The skeleton of one xDS stream; subclasses implement the protocol.

    Subclasses implement `on_request` (a request, after the proxy is known
    and the cache is ready) and `on_snapshot` (the group's snapshot changed).
    """

    __slots__ = ("_after_change", "_end_code", "_end_reason", "_input_log", "_nack_log",
                 "_nonces", "_pusher", "_subscribed", "_task", "_turn",
                 "_wanted", "context", "deps", "group", "handle", "snapshot")
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
        self._task: asyncio.Task[Any] | None = None  # gRPC's handler task, serving `run`
        self._pusher: asyncio.Task[None] | None = None  # the push task while there is one
        self._turn: asyncio.Future[None] | None = None  # done when the turn is given back
        self._wanted = False  # counted in the cache's streams of `group`: release at end
        self._subscribed = False  # to the cache's changes of `group`: unsubscribe at end
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

    def next_nonce(self) -> int:
        """A nonce unique within this stream (positive; its text is what goes on the wire):
        held as a small int, it costs a stream nothing, a str ~50 bytes a type."""
        self._nonces += 1
        return self._nonces

    async def on_request(self, request: Req) -> None:
        """Apply one request (the proxy is identified and the cache ready); maybe respond."""
        raise NotImplementedError

    async def on_snapshot(self) -> None:
        """`self.snapshot` changed: push what each subscribed type now lacks, in order."""
        raise NotImplementedError

    def acked_inline(self, request: Req) -> bool:
        """Record `request` now if it is an ACK `on_request` would only record (no
        response, no change of subscription); False: leave it to `on_request`. Called
        only while nothing else is applied (no push, no other request)."""
        del request
        return False

    async def check_names(self, type_url: str, count: int, new: int = 0) -> None:
        """End the stream (RESOURCE_EXHAUSTED) if `count` names of a type are too many, or
        if `new`, the names of the type it subscribed over its life that it had not
        subscribed before (counted by the caller), are too many."""
        limit = max_names(type_url)
        if count > limit:
            log.warning("refusing xDS stream from %s: %d resource names for %s (at most %d)",
                        self.context.peer(), count, clip(type_url), limit)
            await self.context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{count} resource names subscribed for {clip(type_url)}: at most "
                f"{limit} per type")
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
        self._task = asyncio.current_task()
        reads = aiter(requests)
        try:
            while True:
                try:
                    request = await anext(reads)
                except StopAsyncIteration:
                    return
                except grpc.RpcError as exc:
                    log.debug("xDS stream read ended: %s", exc)
                    return
                except DecodeError as exc:
                    log.warning("malformed xDS request from %s: %s", self.context.peer(), exc)
                    await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                             "malformed xDS request")
                await self._apply(request)
                # Not held while the next one is read: a parsed request holds ~1 KB of
                # upb arena, a first one with Envoy's extensions ~100 KB.
                del request
        except asyncio.CancelledError as exc:
            if not self._ended(exc):
                raise
            log.warning("ending xDS stream of node %r (group %r): %s",
                        self.handle.node_id if self.handle else "?", self.group,
                        self._end_reason)
            await self.context.abort(self._end_code, self._end_reason)
        finally:
            # Synchronous clean-up first: gRPC may cancel this task again while
            # it waits for the push task below, and the registry must not leak.
            if self._subscribed:
                self._subscribed = False
                self.deps.cache.unsubscribe(self.group, self._snapshot_changed)
            if self._wanted:
                self._wanted = False
                self.deps.cache.release(self.group)
            self._task = None  # no cycle stream -> handle -> stream outlives the stream
            if self.handle is not None:
                self.handle.on_end = None
                self.handle.close()
                self.deps.observer.disconnected(self.group)
                log.debug("%s stream %d ended", self.protocol, self.handle.stream_id)
            pusher = self._pusher
            if pusher is not None:
                pusher.cancel()
                await asyncio.wait((pusher,))

    async def _apply(self, request: Req) -> None:
        """Apply one request in the stream's turn."""
        if self.handle is not None and self._turn is None and self.acked_inline(request):
            return
        await self._take_turn()
        try:
            if self.handle is None:
                await self._identify(request)
                # Subscribed right after the snapshot was read (no await between): no
                # change can slip through.
                self.deps.cache.subscribe(self.group, self._snapshot_changed)
                self._subscribed = True
            await self.on_request(request)
        finally:
            self._give_turn()

    def _snapshot_changed(self) -> None:
        if self._pusher is None and self._task is not None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_changes(),
                                                                  name="xds-push")

    async def _push_changes(self) -> None:
        """The push task: apply the group's latest snapshot in the stream's turn, until
        the stream has the latest (a change meanwhile is applied next round)."""
        try:
            while True:
                await self._take_turn()
                try:
                    latest = self.deps.cache.get(self.group)
                    if latest is None or latest is self.snapshot:
                        return
                    self.snapshot = latest
                    self._after_change = True
                    await self.on_snapshot()
                finally:
                    self._after_change = False
                    self._give_turn()
        except Exception as exc:  # a failed write: the call is gone or going
            log.debug("xDS push ended: %r", exc)
            self._stop("push failed", grpc.StatusCode.UNAVAILABLE)
        finally:
            self._pusher = None

    async def _take_turn(self) -> None:
        """Wait until neither a request nor a push is being applied, then take the turn.
        Costs a future per turn, and an idle stream nothing."""
        while self._turn is not None:
            await asyncio.wait((self._turn,))  # wait() never cancels the turn's future
        self._turn = asyncio.get_running_loop().create_future()

    def _give_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.set_result(None)

    async def _identify(self, first: Any) -> None:
        """Place the proxy in its group from the first request's node (which is left without
        its identity fields: see `_build_key`), then wait for config."""
        node = first.node
        try:
            _check_identity(node)
            self.group = self.deps.group_of(node, self.context)
            # Counted before anything is kept for the group: a name past the cap costs
            # nothing (the cache would hold its snapshot, telemetry its labels).
            self.deps.cache.want(self.group)
            self._wanted = True
            node_id: str = node.id
            # A certificate issued for this node id: the identity's own proof.
            node_bound = bool(node_id) and peer_node(self.context) == node_id
            build_version = _build_version(node)
            self.handle = self.deps.registry.connect(
                node_id=node_id,
                group=self.group,
                protocol=self.protocol,
                peer=self.context.peer(),
                build_version=build_version,
                extensions=self.deps.registry.shared_by_key(
                    _build_key(node), lambda: [e.name for e in node.extensions]),
                peer_serial=peer_serial(self.context),
                node_bound=node_bound,
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
                 self.handle.stream_id, self.handle.node_id, self.group, self.handle.peer)
        await self.deps.cache.wait_ready()
        self.snapshot = self.deps.cache.get(self.group)

    def _end(self, reason: str, why: str) -> None:
        """Asked from outside: a revoked certificate (`ProxyRegistry.end_streams`) aborts
        with UNAUTHENTICATED, a newer stream of the same proxy with ABORTED."""
        self._stop(reason, grpc.StatusCode.ABORTED if why == "replaced"
                   else grpc.StatusCode.UNAUTHENTICATED)

    def _stop(self, reason: str, code: grpc.StatusCode) -> None:
        """End the stream with `code` and `reason`: its task is cancelled (it may wait in a
        read) and aborts the call (see `run`). Only the first reason counts."""
        if self._end_reason or self._task is None:
            return
        self._end_reason, self._end_code = reason, code
        self._task.cancel(_ENDED)

    def _ended(self, exc: asyncio.CancelledError) -> bool:
        """Whether `exc` is the cancellation `_stop` asked for and nothing else (not gRPC
        ending the call as well); if so it is withdrawn, for `run` to abort instead."""
        task = asyncio.current_task()
        if not self._end_reason or task is None or exc.args != (_ENDED,) or (
                task.cancelling() != 1):
            return False
        task.uncancel()
        return True


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
    """The node without what differs between proxies of one build (identity, placement),
    serialized. Those fields are cleared in place: read them first. Not on a copy: a copy
    of Envoy's node (~500 extensions) is ~100 KB of upb arena per connecting proxy, which
    thousands connecting at once leave behind as a fragmented heap."""
    for name in ("id", "cluster", "metadata", "locality", "dynamic_parameters"):
        node.ClearField(name)
    key: bytes = node.SerializeToString(deterministic=True)
    return key


def _build_version(node: base_pb2.Node) -> str:
    if not node.HasField("user_agent_build_version"):
        return ""
    v = node.user_agent_build_version.version
    return f"{v.major_number}.{v.minor_number}.{v.patch}"
