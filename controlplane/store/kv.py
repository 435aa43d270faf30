"""The one place that talks to etcd (through aetcd): a tiny KV interface that reconnects.

aetcd does not reconnect by itself: on a connection failure the client is dropped
and the next call connects again, trying each endpoint in turn. Every etcd failure
leaves this module as a StoreUnavailableError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import grpc

from controlplane.errors import StoreUnavailableError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CALL_TIMEOUT_S = 5


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Range:
    kvs: tuple[KV, ...]
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    key: bytes
    value: bytes
    deleted: bool
    mod_revision: int


class Compacted(Exception):  # an internal signal: it never leaves the store
    """The watch's start revision was compacted; re-list from `revision`."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"compacted up to {revision}")
        self.revision = revision


def _split(endpoint: str) -> tuple[str, int]:
    endpoint = endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")
    host, _, port = endpoint.rpartition(":")
    return host or "127.0.0.1", int(port or 2379)


_DOWN = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
    grpc.RpcError,
    OSError,
    asyncio.TimeoutError,
)


class EtcdKV:
    """A connection to an etcd cluster given by its endpoints."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise StoreUnavailableError("no etcd endpoint given: pass --etcd HOST:PORT")
        self._endpoints = [_split(e) for e in endpoints]
        self._next = 0
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            host, port = self._endpoints[self._next % len(self._endpoints)]
            self._client = aetcd.Client(host=host, port=port, timeout=CALL_TIMEOUT_S)
        return self._client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        self._next += 1
        if client is not None:
            try:
                await client.close()
            except _DOWN:
                pass

    async def _call(self, what: str, fn: Callable[[Any], Awaitable[_T]]) -> _T:
        try:
            return await fn(self._connect())
        except _DOWN as exc:
            await self._drop()
            raise StoreUnavailableError(
                f"etcd unavailable during {what}: {exc}; nothing was written. "
                "Check that etcd is running and reachable, then retry."
            ) from exc

    async def close(self) -> None:
        await self._drop()

    async def get(self, key: bytes) -> KV | None:
        got = await self._call("get", lambda c: c.get(key))
        return None if got is None else KV(got.key, got.value, got.mod_revision,
                                           got.create_revision)

    async def range(self, prefix: bytes, end: bytes | None = None) -> Range:
        """Every key under `prefix`, or in [prefix, end) when `end` is given: one
        consistent read at one revision."""
        if end is None:
            got = await self._call("range", lambda c: c.get_prefix(prefix, sort_target="key"))
        else:
            got = await self._call("range", lambda c: c.get_range(prefix, end, sort_target="key"))
        kvs = tuple(KV(kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in got.kvs)
        return Range(kvs, int(got.header.revision))

    async def txn(
        self,
        *,
        expect: Mapping[bytes, int],
        puts: Mapping[bytes, bytes],
        deletes: Sequence[bytes] = (),
        lease: int | None = None,
        expect_values: Mapping[bytes, bytes] | None = None,
    ) -> bool:
        """All of `puts`/`deletes` if every key's mod revision is as expected (0: absent)."""

        async def run(client: Any) -> bool:
            t = client.transactions
            compare = [t.mod(k) == rev for k, rev in expect.items()]
            compare += [t.value(k) == v for k, v in (expect_values or {}).items()]
            ops = [t.put(k, v, lease=lease) for k, v in puts.items()]
            ops += [t.delete(k) for k in deletes]
            ok, _ = await client.transaction(compare=compare, success=ops, failure=[])
            return bool(ok)

        return await self._call("transaction", run)

    async def put(self, key: bytes, value: bytes, *, lease: int | None = None) -> None:
        await self._call("put", lambda c: c.put(key, value, lease=lease))

    async def delete(self, key: bytes) -> None:
        await self._call("delete", lambda c: c.delete(key))

    async def compact(self, revision: int) -> None:
        await self._call("compact", lambda c: c.compact(revision, physical=True))

    async def grant(self, ttl: int) -> int:
        lease = await self._call("lease grant", lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh(self, lease_id: int) -> int:
        """Keep a lease alive; returns its remaining TTL (0 or less: it expired)."""
        async def run(client: Any) -> int:
            reply = await client.refresh_lease(lease_id)
            return int(reply.TTL) if reply is not None else 0

        return await self._call("lease keep-alive", run)

    async def revoke(self, lease_id: int) -> None:
        await self._call("lease revoke", lambda c: c.revoke_lease(lease_id))

    async def watch(
        self, prefix: bytes, start_revision: int, end: bytes | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Events under `prefix` (or in [prefix, end)) from `start_revision` on.

        Errors:
            Compacted: that revision is gone; re-list and watch again.
            StoreUnavailableError: the connection broke; call again to resume.
        """
        try:
            client = self._connect()
            if end is None:
                watch = await client.watch_prefix(prefix, start_revision=start_revision)
            else:
                watch = await client.watch(prefix, range_end=end, start_revision=start_revision)
            async for event in watch:
                yield WatchEvent(event.kv.key, event.kv.value, event.kind == "DELETE",
                                 event.kv.mod_revision)
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(int(exc.compacted_revision)) from exc
        except _DOWN as exc:
            await self._drop()
            raise StoreUnavailableError(f"etcd watch broke: {exc}") from exc
