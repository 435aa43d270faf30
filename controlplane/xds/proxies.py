"""Who is connected and what each proxy has: sent, ACKed and NACKed versions per type.

Each xDS stream owns one `ProxyHandle`: its per-type `TypeRecord`s are the stream's own
per-type state (one object per type, read here, written by the stream), and it reports
sends, ACKs and NACKs through the handle, which wakes `wait_until` waiters. Readers get
frozen `ProxyStatus` values from `ProxyRegistry.list()` (what `get proxies` shows);
`fleet.ReportEncoder` reads the live handles (`handles()`, `acked_versions()`, `nacks()`)
into this replica's fleet report in etcd. Rollouts wait on those reports, never on this
registry: `fleet.EtcdFleet.progress` compares every replica's report with the render of
`stage.py`. A stream's entry is removed when the stream ends, however it ends.

A proxy is its (group, node id): one stream each. A second stream with the same
identity replaces the first (a reconnect whose old connection has not died yet); one
with another client certificate is refused while the first lives, so no stream can
report, or hide the NACKs, of a proxy whose certificate it does not hold.

Not thread-safe: use from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controlplane.errors import PermissionDeniedError
from controlplane.xds.resources import push_rank

MAX_NACK_TEXT = 1024
"""Characters of a NACK's error_detail kept: the proxy writes it, the rollout status and
the fleet report show it, and neither may grow with what a client sends."""

EndStream = Callable[[str, str], None]
"""Ends a stream from outside: (why, one of "revoked" | "replaced")."""


@dataclass(frozen=True)
class TypeStatus:
    """One proxy's state for one type URL."""

    type_url: str
    sent_version: str | None
    """The type's snapshot version the proxy was last brought to (None: nothing sent)."""
    acked_version: str | None
    """The last version the proxy ACKed."""
    last_nack: str | None
    """The error_detail message of the last NACK."""
    last_nack_version: str | None
    """The version that NACK rejected."""
    responses: int
    """Responses sent for this type on this stream (a NACK loop shows here)."""
    resource_names: tuple[str, ...] | None
    """Subscribed names, sorted; None for a wildcard subscription."""


@dataclass(frozen=True)
class ProxyStatus:
    """One connected xDS stream: a proxy, its group, and its per-type state."""

    stream_id: int
    node_id: str
    group: str
    protocol: str
    """`sotw` or `delta`."""
    peer: str
    connected_at: float
    """Unix time the stream's first request arrived."""
    build_version: str
    """Envoy's version from node.user_agent_build_version, e.g. `1.40.0`."""
    extensions: frozenset[str]
    """Extension names the node registered (node.extensions)."""
    types: tuple[TypeStatus, ...]
    """In push order (CDS, EDS, LDS, RDS, SDS, then others)."""

    def type(self, type_url: str) -> TypeStatus | None:
        """The state of one type, or None if the proxy never asked for it."""
        return next((t for t in self.types if t.type_url == type_url), None)



@dataclass(slots=True)
class TypeRecord:
    """What the registry reads of one type on one stream. A stream keeps its own per-type
    state in a subclass of this (`core.TypeState`): one object per type serves both."""

    sent_version: str | None = None
    acked_version: str | None = None
    last_nack: str | None = None
    last_nack_version: str | None = None
    responses: int = 0
    wildcard: bool = True
    """Subscribed to every resource of the type (and to `names`, which Delta allows)."""
    names: frozenset[str] = frozenset()
    """Explicitly subscribed names, shared by the streams that subscribe to equal names
    (`ProxyRegistry.shared`)."""


@dataclass(slots=True)
class ProxyHandle:
    """A stream's own, mutable entry in the registry. Only that stream writes to it."""

    stream_id: int
    node_id: str
    group: str
    protocol: str
    peer: str
    connected_at: float
    build_version: str
    extensions: frozenset[str]
    _registry: ProxyRegistry
    types: dict[str, TypeRecord] = field(default_factory=dict)
    """Per type URL: the stream's state of the type (only the stream adds or writes)."""
    outcomes: int = 0
    """Counts this proxy's ACKs and NACKs: what it has changed when this did."""
    peer_serial: str = ""
    """The serial of the client certificate the stream came with ("" without TLS)."""
    on_end: EndStream | None = None
    """Set by the stream: ends it with a reason; see `end_streams` and `connect`."""

    @property
    def identity(self) -> tuple[str, str]:
        """(group, node id): what the fleet's ACK accounting counts as one proxy."""
        return (self.group, self.node_id)

    def _type(self, type_url: str) -> TypeRecord:
        return self.types.setdefault(type_url, TypeRecord())

    def sent(self, type_url: str, version: str, *, response: bool = True) -> None:
        """A response bringing the proxy to `version` was sent (response=False: no
        response was needed, the proxy already has everything of `version`)."""
        record = self._type(type_url)
        record.sent_version = version
        if response:
            record.responses += 1
        self._registry._notify()

    def acked(self, type_url: str, version: str) -> None:
        """The proxy ACKed `version`."""
        self._type(type_url).acked_version = version
        self.outcomes += 1
        self._registry._notify()

    def nacked(self, type_url: str, version: str, message: str) -> None:
        """The proxy rejected `version` with `message` (error_detail)."""
        record = self._type(type_url)
        record.last_nack = message if len(message) <= MAX_NACK_TEXT else \
            message[:MAX_NACK_TEXT - 1] + "\u2026"
        record.last_nack_version = version
        self.outcomes += 1
        self._registry._notify()

    def close(self) -> None:
        """The stream ended: forget it."""
        self._registry._remove(self)

    def acked_versions(self) -> dict[str, str]:
        """{type URL: last ACKed version}."""
        return {url: r.acked_version for url, r in self.types.items() if r.acked_version}

    def nacks(self) -> dict[str, tuple[str, str]]:
        """{type URL: (last NACKed version, its error_detail message)}."""
        return {url: (r.last_nack_version, r.last_nack) for url, r in self.types.items()
                if r.last_nack and r.last_nack_version}

    def status(self) -> ProxyStatus:
        """A frozen copy of this entry."""
        types = tuple(
            TypeStatus(
                type_url=url,
                sent_version=r.sent_version,
                acked_version=r.acked_version,
                last_nack=r.last_nack,
                last_nack_version=r.last_nack_version,
                responses=r.responses,
                resource_names=None if r.wildcard else tuple(sorted(r.names)),
            )
            for url, r in sorted(self.types.items(), key=lambda kv: (push_rank(kv[0]), kv[0]))
        )
        return ProxyStatus(
            stream_id=self.stream_id,
            node_id=self.node_id,
            group=self.group,
            protocol=self.protocol,
            peer=self.peer,
            connected_at=self.connected_at,
            build_version=self.build_version,
            extensions=self.extensions,
            types=types,
        )


class ProxyRegistry:
    """Every open xDS stream and what it has; waiters are woken on each change."""

    def __init__(self) -> None:
        self._streams: dict[int, ProxyHandle] = {}
        self._by_identity: dict[tuple[str, str], ProxyHandle] = {}
        self._ids = itertools.count(1)
        self._changed: asyncio.Event | None = None
        """Made by the first waiter after a change: thousands of ACKs a second notify
        nobody most of the time."""
        self.generation = 0
        """Counts changes (connects, sends, ACKs, NACKs, closes): cheap to compare."""
        self._shared: weakref.WeakValueDictionary[int, frozenset[str]] = (
            weakref.WeakValueDictionary())
        self._by_key: weakref.WeakValueDictionary[bytes, frozenset[str]] = (
            weakref.WeakValueDictionary())

    def shared(self, names: frozenset[str]) -> frozenset[str]:
        """One copy of each distinct set of names among the live proxies: a real Envoy
        registers ~500 extensions (~70 KB of strings), and a group's proxies mostly
        subscribe to the same names."""
        # Keyed by hash, not by the set: a key would hold its set alive for ever.
        known = self._shared.get(hash(names))
        if known is not None and (known is names or known == names):
            return known
        self._shared[hash(names)] = names
        return names

    def shared_by_key(self, key: bytes, names: Callable[[], Iterable[str]]) -> frozenset[str]:
        """`shared(frozenset(names()))`, with `names()` called once per distinct `key` while
        its set is in use. Reading ~500 extension names off a node costs ~100 µs; most
        proxies are of a few builds, whose nodes (identity aside) are equal bytes."""
        known = self._by_key.get(key)
        if known is None:
            known = self._by_key[key] = self.shared(frozenset(names()))
        return known

    def connect(
        self,
        *,
        node_id: str,
        group: str,
        protocol: str,
        peer: str = "",
        build_version: str = "",
        extensions: Iterable[str] = (),
        peer_serial: str = "",
        node_bound: bool = False,
    ) -> ProxyHandle:
        """Register a new stream; the caller must `close()` the handle when it ends.

        A live stream of the same (group, node id) is ended ("replaced") when the new
        one comes with the same client certificate, or one issued for this very node
        (`node_bound`), or without TLS, where a node's claim is all there is; with
        another certificate the new stream is refused.

        Errors:
            PermissionDeniedError: another client certificate holds this identity.
        """
        held = self._by_identity.get((group, node_id))
        if held is not None and held.peer_serial != peer_serial and not node_bound:
            raise PermissionDeniedError(
                f"node {node_id!r} of group {group!r} is connected with another client "
                f"certificate (serial {held.peer_serial or 'none'}): a node id is one "
                "proxy; give each proxy its own --node-id")
        handle = ProxyHandle(
            stream_id=next(self._ids),
            node_id=node_id,
            group=group,
            protocol=protocol,
            peer=peer,
            connected_at=time.time(),
            build_version=build_version,
            extensions=self.shared(frozenset(extensions)),
            _registry=self,
            peer_serial=peer_serial,
        )
        self._streams[handle.stream_id] = handle
        self._by_identity[handle.identity] = handle
        if held is not None:
            self._streams.pop(held.stream_id, None)
            if held.on_end is not None:
                held.on_end("a newer stream of the same node replaced this one", "replaced")
        self._notify()
        return handle

    def end_streams(self, which: Callable[[ProxyHandle], bool], reason: str) -> int:
        """End the streams `which` selects (e.g. their client certificate was revoked):
        each is aborted with UNAUTHENTICATED and `reason`. Returns how many."""
        ended = 0
        for handle in list(self._streams.values()):
            if handle.on_end is not None and which(handle):
                handle.on_end(reason, "revoked")
                ended += 1
        return ended

    def list(self, group: str | None = None) -> list[ProxyStatus]:
        """Connected streams (of one group, if given), by group, node id, stream id."""
        handles = sorted(
            (h for h in self._streams.values() if group is None or h.group == group),
            key=lambda h: (h.group, h.node_id, h.stream_id),
        )
        return [h.status() for h in handles]

    def handles(self) -> tuple[ProxyHandle, ...]:
        """The live entries, oldest stream first: read them, never write."""
        return tuple(self._streams.values())  # a dict keeps the order of connection

    def __len__(self) -> int:
        return len(self._streams)

    async def wait_until(
        self, condition: Callable[[], bool], *, timeout: float
    ) -> bool:
        """Re-evaluate `condition` on every registry change; False if still false at timeout."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    if self._changed is None:
                        self._changed = asyncio.Event()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def _notify(self) -> None:
        self.generation += 1
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _remove(self, handle: ProxyHandle) -> None:
        if self._by_identity.get(handle.identity) is handle:
            del self._by_identity[handle.identity]
        if self._streams.pop(handle.stream_id, None) is not None:
            self._notify()

    def is_connected(self, group: str, node_id: str, *, peer_serial: str | None = None
                     ) -> bool:
        """Whether the proxy (group, node id) has an xDS stream open here, with the client
        certificate of serial `peer_serial` if given ("" without TLS): what a
        MetricsService push must come from to count."""
        held = self._by_identity.get((group, node_id))
        return held is not None and (peer_serial is None or held.peer_serial == peer_serial)
