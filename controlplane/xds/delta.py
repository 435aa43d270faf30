"""Incremental ADS (DeltaAggregatedResources), per stream and per type.

Per type the stream keeps the subscription (wildcard and/or explicit names)
and `have`: the version of each resource the client holds, seeded from
`initial_resource_versions` and updated as responses are sent. A response
carries only resources whose version differs from `have`, and in
`removed_resources` the names the client holds that no longer exist (and,
once, explicitly subscribed names that do not exist, so the client need not
wait for a timeout).

Subscription changes are applied from every request, even one with a stale
nonce: unlike SotW, a delta request does not repeat the whole subscription.
ACK/NACK count only for the latest nonce. After a NACK nothing is resent:
`have` already holds the rejected versions, so only a later change of a
resource sends it again (no loop). Types are pushed CDS, EDS, LDS, RDS, SDS, and
the endpoints of every cluster a response changes are sent again after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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

_WILDCARD = "*"


@dataclass(slots=True)
class _TypeState:
    type_url: str
    wildcard: bool
    names: set[str]
    have: dict[str, str]
    told_missing: set[str] = field(default_factory=set)
    nonce: str = ""
    """The latest nonce sent for this type."""
    outstanding: bool = False
    """The latest response is neither ACKed nor NACKed yet."""
    sent_version: str | None = None
    """The snapshot version of the type the client has been brought to."""
    must_respond: bool = True
    """The first request of a type is answered even when there is nothing to send."""
    synced: str | None = None
    """The type version `have` and `told_missing` are exactly the client's view of, for
    the current subscription: the next flush needs only what changed since (see
    `Snapshot.changes_since`). None after a subscription change."""

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


class DeltaStream(Stream[discovery_pb2.DeltaDiscoveryRequest]):
    """One DeltaAggregatedResources (or DeltaSecrets) call."""

    protocol = "delta"

    def __init__(self, deps: StreamDeps, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        super().__init__(deps, context)
        self._types: dict[str, _TypeState] = {}
        self._denials = SecretDenials()
        self._held = False
        """Pushes wait for an answer (see `_push`)."""

    async def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        type_url: str = request.type_url
        if not type_url:
            return
        state = self._types.get(type_url)
        if state is None:
            if len(self._types) >= MAX_TYPES_PER_STREAM:
                return
            if type_url not in KNOWN_TYPES and (note := self.input_log.allow()) is not None:
                log.info("delta: node %s asked for unserved type %s: answering empty%s",
                         clip(self._node_id()), clip(type_url), note)
            state = self._types[type_url] = self._first(request)
            added = len(state.names)
        else:
            if request.response_nonce and request.response_nonce == state.nonce:
                self._ack_or_nack(state, request)
            added = self._resubscribe(state, request)
        await self.check_names(type_url, len(state.names), added)
        assert self.handle is not None
        self.handle.subscribed(type_url, None if state.wildcard else state.names)
        if (state.must_respond or request.resource_names_subscribe
                or request.resource_names_unsubscribe):
            await self._flush(state)  # a new subscription is answered at once
        if self._held or (self.snapshot is not None
                          and self.snapshot.version(type_url) != state.sent_version):
            await self._push()  # only an answer can have let a held push go

    def acked_inline(self, request: discovery_pb2.DeltaDiscoveryRequest) -> bool:
        state = self._types.get(request.type_url)
        if (state is None or state.must_respond or self._held or not request.response_nonce
                or request.response_nonce != state.nonce or not state.outstanding
                or request.HasField("error_detail") or request.resource_names_subscribe
                or request.resource_names_unsubscribe or self.snapshot is None
                or self.snapshot.version(state.type_url) != state.sent_version):
            return False
        self._ack_or_nack(state, request)
        return True

    async def on_snapshot(self) -> None:
        await self._push()

    async def _push(self) -> None:
        """Bring each type to the snapshot's version, in push order, holding a type whose
        last response is unanswered and the types after it (see sotw.py)."""
        snapshot = self.snapshot
        self._held = False
        if snapshot is None:
            return
        for state in sorted(self._types.values(), key=lambda s: (push_rank(s.type_url),
                                                                  s.type_url)):
            # Equal type versions are equal resources: a type the client was brought to
            # this version of lacks nothing (a subscription change comes by on_request).
            if not state.must_respond and state.sent_version == snapshot.version(
                    state.type_url):
                continue
            if state.outstanding and not state.must_respond:
                self._held = True
                return
            await self._flush(state)

    @staticmethod
    def _first(request: discovery_pb2.DeltaDiscoveryRequest) -> _TypeState:
        subscribe = set(request.resource_names_subscribe)
        wildcard = request.type_url in WILDCARD_TYPES and (
            not subscribe or _WILDCARD in subscribe
        )
        return _TypeState(
            type_url=request.type_url,
            wildcard=wildcard,
            names=subscribe - {_WILDCARD},
            have=dict(request.initial_resource_versions),
        )

    def _resubscribe(self, state: _TypeState, request: discovery_pb2.DeltaDiscoveryRequest
                     ) -> int:
        """Apply the request's (un)subscriptions; returns how many names it adds."""
        if request.resource_names_subscribe or request.resource_names_unsubscribe:
            state.synced = None
        added = 0
        for name in request.resource_names_subscribe:
            if name == _WILDCARD:
                state.wildcard = True
            elif name not in state.names:
                added += 1
                if not state.wildcard:
                    state.have.pop(name, None)  # a new interest: send it even if held before
                state.names.add(name)
                state.told_missing.discard(name)
        for name in request.resource_names_unsubscribe:
            if name == _WILDCARD:
                state.wildcard = False
            else:
                state.names.discard(name)
                state.told_missing.discard(name)
        for name in [n for n in state.have if not state.wants(n)]:
            del state.have[name]  # the client dropped what it no longer subscribes to
        return added

    def _ack_or_nack(self, state: _TypeState, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        assert self.handle is not None and state.sent_version is not None
        state.outstanding = False
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

    async def _flush(self, state: _TypeState, resend: frozenset[str] = frozenset()) -> None:
        """Send what the client lacks of the current snapshot, if anything, and the
        resources named in `resend` (that it has) again."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        assert self.handle is not None
        version = snapshot.version(state.type_url)
        entries = snapshot.resources(state.type_url)
        have = state.have
        since = (None if state.synced is None
                 else snapshot.changes_since(state.type_url, state.synced))
        if since is not None:
            # The client is exactly at `synced`: only what changed since concerns it, and
            # every subscribed name missing then was already told.
            candidates = sorted(n for n in since.changed | resend
                                if n in entries and state.wants(n))
            changed = [entries[n] for n in candidates
                       if n in resend or have.get(n) != entries[n].version]
            gone = sorted(n for n in since.removed if n in have)
            missing: list[str] = []
        else:
            wanted = entries.keys() if state.wildcard else sorted(state.names & entries.keys())
            changed = [entries[n] for n in wanted
                       if have.get(n) != entries[n].version or n in resend]
            gone = sorted(n for n in have if n not in entries)
            missing = sorted(state.names - entries.keys() - have.keys() - state.told_missing)
        if missing:
            self._denials.check(node_id=self._node_id(), group=self.group,
                                type_url=state.type_url, requested=missing, available=entries)
        state.synced = version
        if not (changed or gone or missing or state.must_respond):
            if version != state.sent_version:
                # Nothing of the new version concerns this client: it is there already.
                state.sent_version = version
                self.handle.sent(state.type_url, version, response=False)
                if not state.outstanding:
                    self.handle.acked(state.type_url, version)
            return
        nonce = self.next_nonce()
        response = wire.delta_parts(
            version, state.type_url,
            (snapshot.delta_resource(state.type_url, e.name) for e in changed),
            nonce, [*gone, *missing])
        for resource in changed:
            state.have[resource.name] = resource.version
            state.told_missing.discard(resource.name)
        for name in gone:
            del state.have[name]
        state.told_missing.update(missing)
        state.told_missing.update(n for n in gone if n in state.names)
        state.nonce, state.sent_version = nonce, version
        state.outstanding, state.must_respond = True, False
        self.handle.sent(state.type_url, version)
        await self.write(response, state.type_url, version)
        endpoints = self._types.get(ENDPOINT)
        if state.type_url == CLUSTER and changed and endpoints is not None:
            # A changed cluster is re-created and waits for its endpoints without asking
            # again: send them again even if unchanged (see sotw.py).
            await self._flush(endpoints, frozenset(r.name for r in changed))

    def _node_id(self) -> str:
        return self.handle.node_id if self.handle is not None else "?"
