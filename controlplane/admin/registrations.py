"""`endpoint register` on the admin API: one endpoint held under an etcd lease for as
long as its stream lives.

The first message registers: the caller (operator role) names a version that opted in
(`endpointsFrom: {registered: true}`), the server grants a lease of the TTL and writes
`Keys.registration` under it, with the caller as principal and one audit entry, in one
transaction. Each later message refreshes the lease. When the stream ends (the client
half-closes on SIGTERM/SIGINT, or its connection drops) the lease is revoked at once and
etcd deletes the key; if this replica dies, the lease expires within the TTL. The
leader's `discovery.leased` copies the key into the version's endpoint set.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator

import grpc

from controlplane.admin.auth import Role
from controlplane.admin.base import AdminBase
from controlplane.admin.status import abort_with
from controlplane.api import admin_pb2
from controlplane.discovery.naming import ip_endpoint, registration_value
from controlplane.errors import (
    ControlPlaneError,
    FieldError,
    InvalidInputError,
    StoreUnavailableError,
)
from controlplane.model import DesiredState
from controlplane.store import AuditRecord, Store

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 10
MIN_TTL_S, MAX_TTL_S = 2, 3600
"""etcd grants no lease under about 2 s (its election timeout); an hour bounds how long a
dead registrar's endpoint may stay."""
REVOKE_TIMEOUT_S = 3.0
_REVOKING: set[asyncio.Task[None]] = set()
"""Revocations under way when their stream's task was cancelled (kept referenced)."""


def checked(state: DesiredState, request: admin_pb2.RegisterEndpointRequest
            ) -> tuple[str, int]:
    """The address as stored and the TTL in whole seconds, if the version takes it.

    Errors:
        InvalidInputError: every problem, each naming its field.
    """
    problems: list[FieldError] = []
    ups = state.upstreams.get(request.upstream)
    if ups is None:
        problems.append(FieldError("upstream", f"no Upstream named {request.upstream!r}"))
    elif request.version not in ups.spec.versions:
        problems.append(FieldError("version", f"Upstream/{ups.name} has no version "
                                              f"{request.version!r} (it has "
                                              f"{sorted(ups.spec.versions)})"))
    else:
        source = ups.spec.versions[request.version].endpoints_from
        if source is None or not source.registered:
            problems.append(FieldError(
                f"Upstream/{ups.name}: spec.versions.{request.version}.endpointsFrom",
                "does not say registered: true, so no one may add endpoints to it; apply "
                "the version with endpointsFrom: {registered: true} first"))
    address = ""
    try:
        address = ip_endpoint(request.address)
    except ValueError as exc:
        problems.append(FieldError("address", str(exc)))
    ttl = request.ttl_seconds or DEFAULT_TTL_S
    if not MIN_TTL_S <= ttl <= MAX_TTL_S:
        problems.append(FieldError("ttl", f"{ttl:g}s: give {MIN_TTL_S}s to {MAX_TTL_S}s"))
    if problems:
        raise InvalidInputError(problems)
    return address, math.ceil(ttl)


class RegistrationMethods(AdminBase):
    """RegisterEndpoint."""

    async def RegisterEndpoint(
        self, request_iterator: AsyncIterator[admin_pb2.RegisterEndpointRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[admin_pb2.RegisterEndpointResponse]:
        requests = aiter(request_iterator)
        lease: list[int] = []  # the lease held now (a new one after an expiry)
        try:
            principal = await self._auth.authenticate(context)
            principal.require(Role.OPERATOR, "endpoint register")
            first = await anext(requests, None)
            if first is None:
                return
            state, _ = await self._store.load()
            address, ttl = checked(state, first)
            key = self._store.keys.registration(first.upstream, first.version, address)
            value = registration_value(address, principal.name)
            audit = AuditRecord(
                actor=principal.name, action="endpoint/register", kind="Upstream",
                name=first.upstream, after={"version": first.version, "address": address,
                                            "ttlSeconds": ttl},
                reason=f"{address} registered to version {first.version} while its "
                       "registrar keeps the lease alive")
            await self._hold(key, value, ttl, lease, audit)
            log.info("endpoint %s registered to %s/%s by %s (lease %x, ttl %ds)", address,
                     first.upstream, first.version, principal.name, lease[0], ttl)
            yield admin_pb2.RegisterEndpointResponse(
                upstream=first.upstream, version=first.version, address=address,
                principal=principal.name, ttl_seconds=ttl)
            async for _ in requests:  # a keepalive
                try:
                    if await self._store.kv.refresh(lease[0]) <= 0:
                        log.warning("the lease of %s expired (etcd out of reach for its "
                                    "TTL?); registering it again", key.decode())
                        await self._hold(key, value, ttl, lease, None)
                except StoreUnavailableError as exc:  # the next keepalive tries again
                    log.warning("registration %s: keepalive failed: %s", key.decode(), exc)
            log.info("endpoint %s of %s/%s deregistered", address, first.upstream,
                     first.version)
        except ControlPlaneError as exc:
            await abort_with(context, exc)
        finally:
            if lease:
                await _revoke(self._store, lease[0])
            # gRPC's request generator, when the stream ended early (a refusal): closed
            # here, not by the garbage collector once its event loop may be gone.
            await requests.aclose()  # type: ignore[attr-defined]

    async def _hold(self, key: bytes, value: bytes, ttl: int, lease: list[int],
                    audit: AuditRecord | None) -> None:
        """Grant a lease and write `key` under it (with `audit`), in `lease[0]`.

        Errors:
            StoreUnavailableError: etcd is down, or the lease ended before the write.
        """
        lease[:] = [await self._store.kv.grant(ttl)]
        written = await self._store.commit(puts={key: value}, expect={},
                                           audit=[audit] if audit else [],
                                           lease=lease[0], leased=[key])
        if written is None:
            raise StoreUnavailableError("the registration's lease ended before it was "
                                        "written; register again")


async def _revoke(store: Store, lease: int) -> None:
    """Revoke `lease` (etcd deletes the key) in a task of its own: the stream's task may
    be cancelled (its client gone) and cancelled again, and the revocation must go on."""
    task = asyncio.create_task(_bounded_revoke(store, lease), name=f"revoke-{lease:x}")
    _REVOKING.add(task)
    task.add_done_callback(_REVOKING.discard)
    await asyncio.shield(task)


async def _bounded_revoke(store: Store, lease: int) -> None:
    try:
        async with asyncio.timeout(REVOKE_TIMEOUT_S):
            await store.kv.revoke(lease)
    except (StoreUnavailableError, TimeoutError) as exc:
        log.warning("could not revoke registration lease %x (%s); it expires within its "
                    "TTL", lease, str(exc) or f"no answer in {REVOKE_TIMEOUT_S:g}s")
