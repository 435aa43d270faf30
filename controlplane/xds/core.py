"""The protocol core SotW and Delta share, as go-control-plane's pkg/server/stream/v3.

One vocabulary for one type URL on one stream (`TypeState`):

* `nonce`, `sent_version`: the latest response sent for the type and the snapshot
  version of the type it brought the client to;
* `must_answer`: a request waits for an answer whatever the versions (the first
  request of a type, a changed subscription, a SotW re-subscription);
* `unanswered`: the latest response is neither ACKed nor NACKed yet.

What lives here, once: ACK/NACK (`_ack_or_nack`: recorded in the registry, the observer
told, the NACK's text logged rate-limited), the fast path for a plain ACK
(`acked_inline`), what a request leads to (`_settle`), and the push (`_push`): each type
brought to the snapshot's version in push order (CDS, EDS, LDS, RDS, SDS), a type whose
last response is unanswered holding itself and the types after it (make before break)
until its ACK or NACK, so a slow proxy gets the latest version once, not every version
in between (as Istio does). Backpressure (a stream reads no request while it applies
one, and a push waits its turn) and the push budget, under every write, are in
`stream`.

A protocol (`sotw`, `delta`) keeps only what differs: what a request means
(`on_request`), whether an ACK is no more than an ACK (`_plain_ack`), and how a response
is built (`_flush`, which records what it sends with `_sending`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import grpc

from controlplane.xds.denials import SecretDenials
from controlplane.xds.loglimit import clip
from controlplane.xds.proxies import TypeRecord
from controlplane.xds.resources import KNOWN_TYPES, SECRET, push_rank, short_kind
from controlplane.xds.stream import MAX_TYPES_PER_STREAM, Stream, StreamDeps

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TypeState(TypeRecord):
    """One type URL on one stream. It is also the registry's record of the type
    (`ProxyHandle.types`): one object per type, not one per reader."""

    type_url: str = ""
    nonce: int = 0
    """The latest nonce sent for this type (0 before the first response)."""
    new_names: int = 0
    """Names subscribed over the stream's life that were not subscribed before."""
    must_answer: bool = True
    """A request waits for an answer regardless of versions."""
    unanswered: bool = False
    """The latest response is neither ACKed nor NACKed yet."""


Req = TypeVar("Req")
S = TypeVar("S", bound=TypeState)


class CoreStream(Stream[Req], Generic[Req, S]):
    """A `Stream` with the shared protocol core; subclasses implement `on_request`,
    `_plain_ack` and `_flush` (see the module docstring)."""

    __slots__ = ("_denials", "_held")

    def __init__(self, deps: StreamDeps, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        super().__init__(deps, context)
        self._held = False
        """Pushes wait for an answer (see `_push`)."""
        self._denials: SecretDenials | None = None

    @property
    def _types(self) -> dict[str, S]:
        """The stream's per-type states: the registry's records of them, the same objects."""
        assert self.handle is not None  # requests and pushes come after `_identify`
        return cast(dict[str, S], self.handle.types)

    def _new_type(self, type_url: str, make: Callable[[str], S]) -> S | None:
        """The state of a type the stream has not asked for before, made by `make` of its
        type URL; None: the stream holds `MAX_TYPES_PER_STREAM` types already (not
        answered)."""
        types = self._types
        if len(types) >= MAX_TYPES_PER_STREAM:
            return None
        if type_url not in KNOWN_TYPES and (note := self.input_log.allow()) is not None:
            log.info("%s: node %s asked for unserved type %s: answering empty%s",
                     self.protocol, clip(self._node_id()), clip(type_url), note)
        # Interned: each request's type_url is a new str, ~100 bytes a type a stream.
        type_url = sys.intern(type_url)
        state: S = make(type_url)
        types[type_url] = state
        return state

    @staticmethod
    def _latest(state: S, request: Any) -> bool:
        """Whether `request` answers the type's latest response (names its nonce)."""
        return state.nonce != 0 and request.response_nonce == str(state.nonce)

    async def _check_subscription(self, state: S, count: int, added: int) -> None:
        """`check_names` for a subscription of `count` names, `added` of them new."""
        state.new_names += added
        await self.check_names(state.type_url, count, state.new_names)

    def acked_inline(self, request: Any) -> bool:
        state = self._types.get(request.type_url)
        if (state is None or state.must_answer or self._held or not state.unanswered
                or not self._latest(state, request) or request.HasField("error_detail")
                or self.snapshot is None
                or self.snapshot.version(state.type_url) != state.sent_version
                or not self._plain_ack(state, request)):
            return False
        self._ack_or_nack(state, request)
        return True

    def _plain_ack(self, state: S, request: Any) -> bool:
        """Whether `request`, the ACK of `state`'s latest response, changes nothing else
        (its subscription above all)."""
        raise NotImplementedError

    async def on_snapshot(self) -> None:
        await self._push()

    async def _settle(self, state: S, answer: bool) -> None:
        """After a request of `state`'s type: answer it at once if `answer`, then push if
        a held push may go now (only an answer can have let it) or the type lags."""
        if answer:
            await self._flush(state)
        if self._held or (self.snapshot is not None
                          and self.snapshot.version(state.type_url) != state.sent_version):
            await self._push()

    async def _push(self) -> None:
        """Bring each type to the snapshot's version, in push order, holding a type whose
        last response is unanswered and the types after it (see the module docstring)."""
        snapshot = self.snapshot
        self._held = False
        if snapshot is None:
            return
        for state in sorted(self._types.values(), key=_push_key):
            # Equal type versions are equal resources: a type the client was brought to
            # this version of lacks nothing (a subscription change comes by on_request).
            if not state.must_answer and state.sent_version == snapshot.version(
                    state.type_url):
                continue
            if state.unanswered and not state.must_answer:
                self._held = True
                return
            await self._flush(state)

    async def _flush(self, state: S) -> None:
        """Answer the type: send what the client lacks of the current snapshot (if a
        response is due), recording it with `_sending`."""
        raise NotImplementedError

    def _sending(self, state: S, version: str) -> str:
        """Record that a response bringing `state`'s type to `version` goes out now;
        returns its nonce's text."""
        assert self.handle is not None
        state.nonce, state.sent_version = self.next_nonce(), version
        state.must_answer, state.unanswered = False, True
        self.handle.sent(state.type_url, version)
        return str(state.nonce)

    def _ack_or_nack(self, state: S, request: Any) -> None:
        """Record the answer to the type's latest response (the caller checked the nonce)."""
        assert self.handle is not None and state.sent_version is not None
        state.unanswered = False
        if request.HasField("error_detail"):
            message: str = request.error_detail.message
            if (note := self.nack_log.allow()) is not None:
                log.warning("node %s (group %s) NACKed %s version %s: %s%s",
                            clip(self._node_id()), clip(self.group),
                            short_kind(state.type_url), state.sent_version, clip(message, 1024),
                            note)
            self.handle.nacked(state.type_url, state.sent_version, message)
            self.deps.observer.nacked(self.group, state.type_url)
        else:
            self.handle.acked(state.type_url, state.sent_version)
            self.deps.observer.acked(self.group, state.type_url)

    def _check_denied(self, state: S, requested: Any, available: Any) -> None:
        """Log requested secrets the group does not get (kept from the first one asked)."""
        if state.type_url != SECRET:
            return
        if self._denials is None:
            self._denials = SecretDenials()
        self._denials.check(node_id=self._node_id(), group=self.group,
                            type_url=state.type_url, requested=requested, available=available)

    def _node_id(self) -> str:
        return self.handle.node_id if self.handle is not None else "?"


def _push_key(state: TypeState) -> tuple[int, str]:
    return (push_rank(state.type_url), state.type_url)
