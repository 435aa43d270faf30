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
ACK/NACK count only for the latest nonce (`core`). After a NACK nothing is resent:
`have` already holds the rejected versions, so only a later change of a
resource sends it again (no loop). Types are pushed CDS, EDS, LDS, RDS, SDS, and
the endpoints of every cluster a response changes are sent again after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds import wire
from controlplane.xds.core import CoreStream, TypeState
from controlplane.xds.resources import CLUSTER, ENDPOINT, WILDCARD_TYPES

_WILDCARD = "*"


@dataclass(slots=True)
class DeltaState(TypeState):
    """`TypeState` and what the client holds of the type. Like `names`, `told_missing`
    is frozen and replaced when it changes (rarely): empty, it costs nothing."""

    have: dict[str, str] = field(default_factory=dict)
    """The version of each resource the client holds."""
    told_missing: frozenset[str] = frozenset()
    """Subscribed names the client was told do not exist."""
    synced: str | None = None
    """The type version `have` and `told_missing` are exactly the client's view of, for
    the current subscription: the next flush needs only what changed since (see
    `Snapshot.changes_since`). None after a subscription change."""

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


class DeltaStream(CoreStream[discovery_pb2.DeltaDiscoveryRequest, DeltaState]):
    """One DeltaAggregatedResources (or DeltaSecrets) call."""

    __slots__ = ()
    protocol = "delta"

    async def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        type_url: str = request.type_url
        if not type_url:
            return
        state = self._types.get(type_url)
        if state is None:
            state = self._new_type(type_url, lambda url: self._first(url, request))
            if state is None:
                return
            added = len(state.names)
        else:
            if self._latest(state, request):
                self._ack_or_nack(state, request)
            added = self._resubscribe(state, request)
        await self._check_subscription(state, len(state.names), added)
        # A new subscription is answered at once.
        await self._settle(state, state.must_answer or bool(
            request.resource_names_subscribe or request.resource_names_unsubscribe))

    def _plain_ack(self, state: DeltaState, request: discovery_pb2.DeltaDiscoveryRequest
                   ) -> bool:
        return not (request.resource_names_subscribe or request.resource_names_unsubscribe)

    def _first(self, type_url: str, request: discovery_pb2.DeltaDiscoveryRequest
               ) -> DeltaState:
        subscribe = set(request.resource_names_subscribe)
        wildcard = type_url in WILDCARD_TYPES and (not subscribe or _WILDCARD in subscribe)
        return DeltaState(
            type_url=type_url,
            wildcard=wildcard,
            names=self._shared(subscribe - {_WILDCARD}),
            have=dict(request.initial_resource_versions),
        )

    def _resubscribe(self, state: DeltaState, request: discovery_pb2.DeltaDiscoveryRequest
                     ) -> int:
        """Apply the request's (un)subscriptions; returns how many names it adds."""
        subscribe, unsubscribe = request.resource_names_subscribe, \
            request.resource_names_unsubscribe
        if not (subscribe or unsubscribe):
            return 0
        state.synced = None
        names, told = set(state.names), set(state.told_missing)
        added = 0
        for name in subscribe:
            if name == _WILDCARD:
                state.wildcard = True
            elif name not in names:
                added += 1
                if not state.wildcard:
                    state.have.pop(name, None)  # a new interest: send it even if held before
                names.add(name)
                told.discard(name)
        for name in unsubscribe:
            if name == _WILDCARD:
                state.wildcard = False
            else:
                names.discard(name)
                told.discard(name)
        state.names, state.told_missing = self._shared(names), frozenset(told)
        for name in [n for n in state.have if not state.wants(n)]:
            del state.have[name]  # the client dropped what it no longer subscribes to
        return added

    def _shared(self, names: Iterable[str]) -> frozenset[str]:
        return self.deps.registry.shared(frozenset(names))

    async def _flush(self, state: DeltaState, resend: frozenset[str] = frozenset()) -> None:
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
            self._check_denied(state, missing, entries)
        state.synced = version
        if not (changed or gone or missing or state.must_answer):
            if version != state.sent_version:
                # Nothing of the new version concerns this client: it is there already.
                state.sent_version = version
                self.handle.sent(state.type_url, version, response=False)
                if not state.unanswered:
                    self.handle.acked(state.type_url, version)
            return
        nonce = self._sending(state, version)
        response = wire.delta_parts(
            version, state.type_url,
            (snapshot.delta_resource(state.type_url, e.name) for e in changed),
            nonce, [*gone, *missing])
        for resource in changed:
            have[resource.name] = resource.version
        for name in gone:
            del have[name]
        told = state.told_missing
        if told:
            told = told.difference(r.name for r in changed)
        newly = [*missing, *(n for n in gone if n in state.names)]
        state.told_missing = told.union(newly) if newly else told
        await self.write(response, state.type_url, version)
        endpoints = self._types.get(ENDPOINT)
        if state.type_url == CLUSTER and changed and endpoints is not None:
            # A changed cluster is re-created and waits for its endpoints without asking
            # again: send them again even if unchanged (see sotw.py).
            await self._flush(endpoints, frozenset(r.name for r in changed))
