"""State-of-the-world ADS (StreamAggregatedResources), per stream and per type.

Rules, in the order `on_request` applies them:

* A request whose `response_nonce` is not the latest nonce sent for its type
  is stale and ignored, unless nothing was sent for the type yet or the nonce
  is empty (a new subscription, or Envoy re-joining after a control plane
  restart with its last `version_info`: answered normally, and equal content
  gives the equal version).
* Latest nonce without `error_detail` is an ACK; with it, a NACK: recorded,
  and the rejected version is not sent again. The type is answered again only
  when its snapshot version changes or its requested names change.
* A response goes out for the first request of a type, when the requested
  names of an explicit type (EDS, RDS, SDS) change, and when the snapshot's
  version of the type differs from the version sent. Responses to explicit
  types carry every requested name that exists (SDS subscriptions grow).
* After a snapshot change, types are pushed CDS, EDS, LDS, RDS, SDS; and every CDS
  response is followed by an EDS response, even of an unchanged version (a changed
  cluster warms only once it gets its endpoints again).
* A request naming more than `MAX_NAMES_PER_TYPE` resources ends the stream
  with RESOURCE_EXHAUSTED (so does a Delta subscription growing past it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds import wire
from controlplane.xds.denials import SecretDenials
from controlplane.xds.loglimit import clip
from controlplane.xds.resources import (
    CLUSTER,
    ENDPOINT,
    KNOWN_TYPES,
    WILDCARD_TYPES,
    push_rank,
    short_kind,
)
from controlplane.xds.stream import MAX_TYPES_PER_STREAM, Stream, StreamDeps

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _TypeState:
    type_url: str
    wildcard: bool = True
    names: frozenset[str] = frozenset()
    nonce: str = ""
    """The latest nonce sent for this type ("" before the first response)."""
    sent_version: str | None = None
    pending: bool = True
    """A request is waiting for an answer regardless of versions."""
    awaiting: bool = False
    """The latest response is neither ACKed nor NACKed yet."""


class SotwStream(Stream[discovery_pb2.DiscoveryRequest]):
    """One StreamAggregatedResources (or StreamSecrets) call."""

    protocol = "sotw"

    def __init__(self, deps: StreamDeps, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        super().__init__(deps, context)
        self._types: dict[str, _TypeState] = {}
        self._denials = SecretDenials()
        self._held = False
        """Pushes wait for an answer (see `_push`)."""

    async def on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url: str = request.type_url
        if not type_url:
            log.debug("sotw stream %s: request without type_url ignored", self.group)
            return
        await self.check_names(type_url, len(request.resource_names))
        state = self._types.get(type_url)
        if state is None:
            if len(self._types) >= MAX_TYPES_PER_STREAM:
                return
            if type_url not in KNOWN_TYPES and (note := self.input_log.allow()) is not None:
                log.info("sotw: node %s asked for unserved type %s: answering empty%s",
                         clip(self._node_id()), clip(type_url), note)
            state = self._types[type_url] = _TypeState(type_url)
        elif not request.response_nonce:
            state.pending = True  # a re-subscription: answer it like a first request
            state.awaiting = False
        elif request.response_nonce != state.nonce:
            return  # stale: a newer response is on its way to the client
        elif state.sent_version is not None:
            self._ack_or_nack(state, request)
        await self.check_names(type_url, len(request.resource_names),
                               self._subscribe(state, request))
        if state.pending:
            await self._flush(state)  # a request is answered at once
        if self._held or (self.snapshot is not None
                          and self.snapshot.version(type_url) != state.sent_version):
            await self._push()  # only an answer can have let a held push go

    def acked_inline(self, request: discovery_pb2.DiscoveryRequest) -> bool:
        state = self._types.get(request.type_url)
        if (state is None or state.pending or self._held or not request.response_nonce
                or request.response_nonce != state.nonce or state.sent_version is None
                or request.HasField("error_detail") or self.snapshot is None
                or self.snapshot.version(state.type_url) != state.sent_version):
            return False
        names = request.resource_names
        if state.wildcard:
            if names and "*" not in names:
                return False
        elif len(names) != len(state.names) or not state.names.issuperset(names):
            return False
        self._ack_or_nack(state, request)
        return True

    async def on_snapshot(self) -> None:
        await self._push()

    async def _push(self) -> None:
        """Bring each type to the snapshot's version, in push order; a type whose last
        response is not answered yet holds itself and the types after it (make before
        break) until its ACK or NACK: a slow proxy gets the latest version once, not
        every version in between (as Istio does)."""
        snapshot = self.snapshot
        self._held = False
        if snapshot is None:
            return
        for state in sorted(self._types.values(), key=lambda s: (push_rank(s.type_url),
                                                                  s.type_url)):
            if not state.pending and state.sent_version == snapshot.version(state.type_url):
                continue
            if state.awaiting and not state.pending:
                self._held = True
                return
            await self._flush(state)

    def _ack_or_nack(self, state: _TypeState, request: discovery_pb2.DiscoveryRequest) -> None:
        assert self.handle is not None and state.sent_version is not None
        state.awaiting = False
        if request.HasField("error_detail"):
            message = request.error_detail.message
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

    def _subscribe(self, state: _TypeState, request: discovery_pb2.DiscoveryRequest) -> int:
        """Take the request's subscription; returns how many names it adds."""
        names = self.deps.registry.shared(frozenset(request.resource_names))
        wildcard = state.type_url in WILDCARD_TYPES and (not names or "*" in names)
        names = frozenset() if wildcard else names
        added = 0
        if wildcard != state.wildcard or names != state.names:
            added = len(names - state.names)
            state.wildcard, state.names = wildcard, names
            state.pending = True
        assert self.handle is not None
        self.handle.subscribed(state.type_url, None if wildcard else names)
        return added

    async def _flush(self, state: _TypeState) -> None:
        """Answer the type if a request waits or the snapshot moved past what was sent."""
        snapshot = self.snapshot
        if snapshot is None:
            return  # the group has no config yet; answered when it comes
        version = snapshot.version(state.type_url)
        if not state.pending and version == state.sent_version:
            return
        if not state.wildcard:
            self._denials.check(node_id=self._node_id(), group=self.group,
                                type_url=state.type_url, requested=state.names,
                                available=snapshot.resources(state.type_url))
        body = snapshot.sotw_body(state.type_url, None if state.wildcard else state.names)
        nonce = self.next_nonce()
        previous = state.sent_version
        state.nonce, state.sent_version, state.pending = nonce, version, False
        state.awaiting = True
        assert self.handle is not None
        self.handle.sent(state.type_url, version)
        await self.write(wire.sotw_parts(body, nonce), state.type_url, version)
        endpoints = self._types.get(ENDPOINT)
        clusters_changed = state.type_url == CLUSTER and previous not in (None, version)
        if clusters_changed and endpoints is not None:
            # Envoy re-creates every changed cluster and waits for its endpoints without
            # asking again: send them even if unchanged, or it sits in warming until its
            # initial fetch timeout (15 s). go-control-plane#245, kuma#331.
            endpoints.pending = True
            await self._flush(endpoints)

    def _node_id(self) -> str:
        return self.handle.node_id if self.handle is not None else "?"
