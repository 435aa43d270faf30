"""State-of-the-world ADS (StreamAggregatedResources), per stream and per type.

Rules, in the order `on_request` applies them:

* A request whose `response_nonce` is not the latest nonce sent for its type
  is stale and ignored, unless nothing was sent for the type yet or the nonce
  is empty (a new subscription, or Envoy re-joining after a control plane
  restart with its last `version_info`: answered normally, and equal content
  gives the equal version).
* Latest nonce without `error_detail` is an ACK; with it, a NACK: recorded
  (`core`), and the rejected version is not sent again. The type is answered again only
  when its snapshot version changes or its requested names change.
* A response goes out for the first request of a type, when the requested
  names of an explicit type (EDS, RDS, SDS) change, and when the snapshot's
  version of the type differs from the version sent. Responses to explicit
  types carry every requested name that exists (SDS subscriptions grow).
* After a snapshot change, types are pushed CDS, EDS, LDS, RDS, SDS, an unanswered
  type holding the ones after it (`core`); and every CDS response is followed by an
  EDS response, even of an unchanged version (a changed cluster warms only once it
  gets its endpoints again).
* A request naming more than `MAX_NAMES_PER_TYPE` resources ends the stream
  with RESOURCE_EXHAUSTED (so does a Delta subscription growing past it).
"""

from __future__ import annotations

import logging

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds import wire
from controlplane.xds.core import CoreStream, TypeState
from controlplane.xds.resources import CLUSTER, ENDPOINT, WILDCARD_TYPES

log = logging.getLogger(__name__)


class SotwStream(CoreStream[discovery_pb2.DiscoveryRequest, TypeState]):
    """One StreamAggregatedResources (or StreamSecrets) call."""

    __slots__ = ()
    protocol = "sotw"

    async def on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url: str = request.type_url
        if not type_url:
            log.debug("sotw stream %s: request without type_url ignored", self.group)
            return
        await self.check_names(type_url, len(request.resource_names))
        state = self._types.get(type_url)
        if state is None:
            state = self._new_type(type_url, lambda url: TypeState(type_url=url))
            if state is None:
                return
        elif not request.response_nonce:
            state.must_answer = True  # a re-subscription: answer it like a first request
            state.unanswered = False
        elif not self._latest(state, request):
            return  # stale: a newer response is on its way to the client
        elif state.sent_version is not None:
            self._ack_or_nack(state, request)
        await self._check_subscription(state, len(request.resource_names),
                                       self._subscribe(state, request))
        await self._settle(state, state.must_answer)

    def _plain_ack(self, state: TypeState, request: discovery_pb2.DiscoveryRequest) -> bool:
        names = request.resource_names
        if state.wildcard:
            return not names or "*" in names
        return len(names) == len(state.names) and state.names.issuperset(names)

    def _subscribe(self, state: TypeState, request: discovery_pb2.DiscoveryRequest) -> int:
        """Take the request's subscription; returns how many names it adds."""
        names = self.deps.registry.shared(frozenset(request.resource_names))
        wildcard = state.type_url in WILDCARD_TYPES and (not names or "*" in names)
        names = frozenset() if wildcard else names
        added = 0
        if wildcard != state.wildcard or names != state.names:
            added = len(names - state.names)
            state.wildcard, state.names = wildcard, names
            state.must_answer = True
        return added

    async def _flush(self, state: TypeState) -> None:
        """Answer the type if a request waits or the snapshot moved past what was sent."""
        snapshot = self.snapshot
        if snapshot is None:
            return  # the group has no config yet; answered when it comes
        version = snapshot.version(state.type_url)
        if not state.must_answer and version == state.sent_version:
            return
        if not state.wildcard:
            self._check_denied(state, state.names, snapshot.resources(state.type_url))
        body = snapshot.sotw_body(state.type_url, None if state.wildcard else state.names)
        previous = state.sent_version
        nonce = self._sending(state, version)
        await self.write(wire.sotw_parts(body, nonce), state.type_url, version)
        endpoints = self._types.get(ENDPOINT)
        clusters_changed = state.type_url == CLUSTER and previous not in (None, version)
        if clusters_changed and endpoints is not None:
            # Envoy re-creates every changed cluster and waits for its endpoints without
            # asking again: send them even if unchanged, or it sits in warming until its
            # initial fetch timeout (15 s). go-control-plane#245, kuma#331.
            endpoints.must_answer = True
            await self._flush(endpoints)
