"""The one place that talks to etcd (through aetcd): a small KV interface that reconnects.

aetcd is untyped and does not reconnect by itself; nothing else imports it. Here:

- A failed call drops its connection and tries again on a new one to the next endpoint:
  each endpoint once, plus one more try unless the failure was a timeout. A new gRPC
  channel (with its own subchannels: gRPC would otherwise share them between channels)
  has no reconnect back-off, so an etcd that came back is reached at once.
- Every etcd failure leaves this module as a StoreUnavailableError that says what to do;
  a request etcd refuses for its size as a RequestTooLargeError (bad input, no retry).
- Transactions are built from etcd's own protobuf messages, not aetcd's helper, to get
  the revision they committed at and, when a guard fails, the guarded keys as they are.

Replaying a call on the next endpoint is safe for everything the store sends: writes
are compare-and-swap transactions, so a replay of one that did land fails its guard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.watcher
import grpc
from aetcd import rpc

from controlplane.errors import ControlPlaneError, RequestTooLargeError, StoreUnavailableError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CALL_TIMEOUT_S = 5
CLOSE_TIMEOUT_S = 2.0
"""How long dropping a connection waits for it to close; the close then ends in the
background (it never holds up a caller, nor shutdown)."""
# Notice a silently dead connection (a partition) within seconds, also on an idle watch.
# etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
_CHANNEL_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.use_local_subchannel_pool": 1,
    "grpc.max_reconnect_backoff_ms": 2_000,
}


@dataclass(frozen=True)
class EtcdTLS:
    """How to reach an etcd that speaks TLS: the CA that signed its certificate, and the
    client pair it asks for (both or neither; etcd's --client-cert-auth wants them).
    Files are read on each new connection, so a renewed pair is picked up."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Errors: StoreUnavailableError naming the file that could not be read."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "--etcd-ca"),
            private_key=_read(self.key, "--etcd-key"),
            certificate_chain=_read(self.cert, "--etcd-cert"),
        )


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StoreUnavailableError(
            f"cannot read the etcd TLS file {path} ({flag}): {exc.strerror}; "
            "check the path and that this user may read it") from exc


class _TLSClient(aetcd.Client):  # type: ignore[misc]  # aetcd is untyped
    """aetcd's client on a TLS channel (aetcd itself only makes plaintext ones): the same
    stubs and watcher as aetcd.Client.connect builds, on `secure_channel`."""

    def __init__(self, *args: Any, tls: EtcdTLS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls = tls

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self.channel = rpc.secure_channel(f"{self._host}:{self._port}",
                                          self._tls.credentials(),
                                          options=self._options.items())
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(rpc.WatchStub(self.channel),
                                              timeout=self._timeout, metadata=self.metadata)
        self._connected.set()


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Range:
    """Keys read in one consistent read, and the revision it was at."""

    kvs: tuple[KV, ...]
    revision: int


@dataclass(frozen=True)
class TxnResult:
    """A transaction's outcome; true when its guards held and it wrote.

    Attributes:
        revision: the store's revision after the transaction (its own when it wrote).
        current: when a guard failed, every guarded key as it is now (None: absent).
        lease_expired: the lease to attach puts to no longer exists (nothing written).
    """

    succeeded: bool
    revision: int
    current: Mapping[bytes, KV | None] = field(default_factory=dict)
    lease_expired: bool = False

    def __bool__(self) -> bool:
        return self.succeeded


@dataclass(frozen=True)
class WatchEvent:
    key: bytes
    value: bytes
    deleted: bool
    mod_revision: int


class Compacted(ControlPlaneError):  # an internal signal: it never leaves the store
    """The watch's start revision was compacted; re-list, then watch from the new revision."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd compacted its history up to revision {revision}")
        self.revision = revision


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """`http://host:port`, `host:port` or `host` (port 2379) → (host, port)."""
    text = endpoint.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "2379"
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise StoreUnavailableError(
            f"bad etcd endpoint {endpoint!r}: use HOST:PORT, e.g. 127.0.0.1:2379"
        ) from None


class _ConnectionClosedError(ConnectionError):
    """A call's connection was closed under it by another task."""


# Failures of the connection (or of etcd) as opposed to our own mistakes: all of them
# mean "etcd did not do it"; aetcd raises ClientError for codes it has no class for.
_DOWN: tuple[type[BaseException], ...] = (
    aetcd.exceptions.ClientError,
    grpc.RpcError,
    OSError,  # _ConnectionClosedError too
    TimeoutError,
)
_CLOSING: set[asyncio.Task[None]] = set()
"""Connections being closed in the background (a task needs a reference until it ends)."""


def _cancelling() -> bool:
    """Whether the current task has been asked to cancel."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _end_if_cancelling(failure: BaseException | None = None) -> None:
    """CancelledError if this task has been asked to cancel: gRPC and aetcd can turn a
    cancellation into a failed call (gRPC reports the call's own error when the call
    ended as the cancellation came; asyncio.wait_for, in aetcd, returns what completed
    with it), and a task told to end that saw a StoreUnavailableError instead would
    retry etcd for ever (so stopping would wait on it)."""
    if _cancelling():
        raise asyncio.CancelledError(f"cancelled; etcd failed meanwhile: {failure!r}")


async def _close(client: Any) -> None:
    try:
        await client.close()
    except _DOWN as exc:
        log.debug("closing a broken etcd connection: %r", exc)


def _kv(raw: Any) -> KV:
    return KV(raw.key, raw.value, raw.mod_revision, raw.create_revision, raw.lease)


class EtcdKV:
    """A connection to an etcd cluster given by its endpoints; safe to share between tasks."""

    def __init__(self, endpoints: Sequence[str], *, timeout: int = CALL_TIMEOUT_S,
                 max_request_bytes: int | None = None, tls: EtcdTLS | None = None) -> None:
        if not endpoints:
            raise StoreUnavailableError("no etcd endpoint given: pass --etcd HOST:PORT")
        self._endpoints = [parse_endpoint(e) for e in endpoints]
        if tls is None and any(e.strip().startswith("https://") for e in endpoints):
            tls = EtcdTLS()  # https:// and no files: the system's trusted CAs, no client pair
        self._tls = tls
        self._timeout = timeout
        self.max_request_bytes = max_request_bytes
        """etcd's --max-request-bytes when known (an embedded etcd): transactions over it
        are refused before they are sent."""
        self._next = 0
        self._client: Any = None
        self.on_error: Callable[[str], None] | None = None
        """Called with the operation ("get", "txn", "watch", ...) on each failed attempt
        (metrics); it must not block or raise."""

    @property
    def tls(self) -> EtcdTLS | None:
        return self._tls

    @property
    def endpoint(self) -> str:
        """The endpoint the next call goes to."""
        host, port = self._endpoints[self._next % len(self._endpoints)]
        return f"{host}:{port}"

    async def _connect(self) -> Any:
        if self._client is None:
            host, port = self._endpoints[self._next % len(self._endpoints)]
            client = (
                aetcd.Client(host=host, port=port, timeout=self._timeout,
                             options=_CHANNEL_OPTIONS)
                if self._tls is None else
                _TLSClient(host=host, port=port, timeout=self._timeout,
                           options=_CHANNEL_OPTIONS, tls=self._tls)
            )
            await client.connect()  # only builds the channel: it does not wait for etcd
            if self._client is None:
                self._client = client
            else:  # another task connected while we did
                await client.close()
        return self._client

    async def _drop(self, client: Any) -> None:
        """Forget `client` (if still current) and move on to the next endpoint."""
        if client is None or client is not self._client:
            return  # another task already dropped it
        self._client = None
        self._next += 1
        # In a task of its own: aetcd's close awaits its watch stream's task and swallows
        # a CancelledError meant for the task that called it, so a caller cancelled
        # meanwhile (every task, at shutdown) would go on for ever, holding up the exit.
        closing = asyncio.create_task(_close(client), name="etcd-close")
        _CLOSING.add(closing)
        closing.add_done_callback(_CLOSING.discard)
        done, _ = await asyncio.wait({closing}, timeout=CLOSE_TIMEOUT_S)
        if not done:
            log.warning("closing the etcd connection took over %gs; it ends in the background",
                        CLOSE_TIMEOUT_S)

    async def _call(self, what: str, fn: Callable[[Any], Awaitable[_T]]) -> _T:
        error: BaseException | None = None
        for attempt in range(len(self._endpoints) + 1):
            client = None
            try:
                client = await self._connect()
                try:
                    return await fn(client)
                except asyncio.CancelledError as exc:
                    if _cancelling():
                        raise  # this task is being cancelled: let it end
                    # Not this task's: another task dropped the connection under the
                    # call (closing a gRPC channel cancels its calls). A failed attempt.
                    raise _ConnectionClosedError("the connection was closed") from exc
            except _DOWN as exc:
                error = exc
                self._failed(what)
                log.debug("etcd %s failed at %s: %r", what, self.endpoint, exc)
                await self._drop(client)
                _end_if_cancelling(exc)
                if attempt + 1 >= len(self._endpoints) and _timed_out(exc):
                    break  # etcd is slow or cut off: another wait would not help
        where = ", ".join(f"{h}:{p}" for h, p in self._endpoints)
        described = _describe(error)
        hint = ("Check that etcd speaks TLS, signed by --etcd-ca, and takes this client "
                "pair (--etcd-cert, --etcd-key)" if _tls_failed(described)
                else "Check that etcd is running and reachable (--etcd HOST:PORT)")
        raise StoreUnavailableError(
            f"store unavailable: etcd ({where}) did not answer a {what}: {described}. "
            f"{hint}, then retry."
        ) from error

    def _failed(self, what: str) -> None:
        if self.on_error is not None:
            self.on_error(what)

    async def close(self) -> None:
        await self._drop(self._client)

    # ---- key-value ----------------------------------------------------------------------

    async def get(self, key: bytes) -> KV | None:
        got = await self._call("get", lambda c: c.get(key))
        return None if got is None else _kv(got)

    async def range(self, prefix: bytes, end: bytes | None = None) -> Range:
        """Every key under `prefix`, or in [prefix, end) when `end` is given, sorted by key:
        one consistent read at one revision."""
        if end is None:
            got = await self._call("read", lambda c: c.get_prefix(prefix, sort_target="key"))
        else:
            got = await self._call("read", lambda c: c.get_range(prefix, end, sort_target="key"))
        return Range(tuple(_kv(kv) for kv in got.kvs), int(got.header.revision))

    async def txn(
        self,
        *,
        expect: Mapping[bytes, int],
        puts: Mapping[bytes, bytes],
        deletes: Sequence[bytes] = (),
        lease: int | None = None,
        expect_values: Mapping[bytes, bytes] | None = None,
        leased: Sequence[bytes] | None = None,
    ) -> TxnResult:
        """All of `puts` and `deletes` at one revision, if every guard holds.

        Args:
            expect: key → its mod revision as read (0: the key must not exist).
            expect_values: key → the value it must hold.
            lease: attach puts to this lease (etcd deletes them when it ends); only the
                keys in `leased` when that is given. An expired lease fails the
                transaction (`lease_expired`).
        """
        guards = [*expect, *(k for k in (expect_values or {}) if k not in expect)]
        compare = [
            rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=k,
                        mod_revision=rev)
            for k, rev in expect.items()
        ] + [
            rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE, key=k, value=v)
            for k, v in (expect_values or {}).items()
        ]
        attach = set(puts if leased is None else leased)
        success = [
            rpc.RequestOp(request_put=rpc.PutRequest(
                key=k, value=v, lease=(lease or 0) if k in attach else 0))
            for k, v in puts.items()
        ] + [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for k in deletes]
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k)) for k in guards]
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        size = request.ByteSize()
        if self.max_request_bytes is not None and size > self.max_request_bytes:
            raise RequestTooLargeError("transaction", size=size, limit=self.max_request_bytes)

        async def run(client: Any) -> TxnResult:
            try:
                reply = await client.kvstub.Txn(request, timeout=self._timeout,
                                                metadata=client.metadata)
            except grpc.aio.AioRpcError as exc:
                if lease and exc.code() == grpc.StatusCode.NOT_FOUND and "lease" in (
                    exc.details() or ""
                ):
                    return TxnResult(False, 0, lease_expired=True)
                if _too_large(exc):  # etcd's answer, not an outage: do not retry
                    raise RequestTooLargeError("transaction", size=size,
                                               limit=self.max_request_bytes) from exc
                raise
            revision = int(reply.header.revision)
            if reply.succeeded:
                return TxnResult(True, revision)
            current: dict[bytes, KV | None] = {}
            for key, op in zip(guards, reply.responses, strict=True):
                kvs = op.response_range.kvs
                current[key] = _kv(kvs[0]) if kvs else None
            return TxnResult(False, revision, current)

        return await self._call("transaction", run)

    async def put(self, key: bytes, value: bytes, *, lease: int | None = None) -> None:
        await self._call("put", lambda c: c.put(key, value, lease=lease))

    async def delete(self, key: bytes) -> None:
        await self._call("delete", lambda c: c.delete(key))

    async def compact(self, revision: int) -> None:
        """Drop the history before `revision` (watches from before it get Compacted).
        History compacted already past it (by another replica) is not an error."""
        async def run(client: Any) -> None:
            try:
                await client.compact(revision, physical=True)
            except aetcd.exceptions.ClientError as exc:
                if "required revision has been compacted" not in str(exc):
                    raise

        await self._call("compaction", run)

    async def defragment(self) -> None:
        """Rewrite the connected member's db file: what compaction freed is gone from it
        (freed pages otherwise keep their old bytes)."""
        await self._call("defragment", lambda c: c.defragment())

    # ---- leases -------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; returns its id."""
        lease = await self._call("lease grant", lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh(self, lease_id: int) -> int:
        """Keep a lease alive; returns its remaining TTL (0 or less: it has expired)."""

        async def run(client: Any) -> int:
            reply = await client.refresh_lease(lease_id)
            return int(reply.TTL) if reply is not None else 0

        return await self._call("lease keep-alive", run)

    async def revoke(self, lease_id: int) -> None:
        """End a lease now, deleting its keys; a lease that already expired is fine."""

        async def run(client: Any) -> None:
            try:
                await client.revoke_lease(lease_id)
            except aetcd.exceptions.ClientError as exc:
                if "lease not found" not in str(exc):
                    raise

        await self._call("lease revoke", run)

    # ---- watch --------------------------------------------------------------------------

    async def watch(
        self, prefix: bytes, start_revision: int, end: bytes | None = None
    ) -> AsyncGenerator[WatchEvent, None]:
        """Events under `prefix` (or in [prefix, end)) from `start_revision` on, in order.

        Errors:
            Compacted: that revision is gone; re-list and watch again.
            StoreUnavailableError: the stream broke (or ended); call again to resume.
        """
        client = None
        range_end = end if end is not None else _prefix_end(prefix)
        try:
            client = await self._connect()
            watch = await client.watch(prefix, range_end=range_end,
                                       start_revision=start_revision)
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(int(exc.compacted_revision)) from exc
        except _DOWN as exc:
            self._failed("watch")
            await self._drop(client)
            _end_if_cancelling(exc)
            raise StoreUnavailableError(f"etcd watch could not start: {_describe(exc)}") from exc
        try:
            async for event in watch:
                yield WatchEvent(event.kv.key, event.kv.value, event.kind == "DELETE",
                                 event.kv.mod_revision)
        except aetcd.exceptions.RevisionCompactedError as exc:
            raise Compacted(int(exc.compacted_revision)) from exc
        except _DOWN as exc:
            self._failed("watch")
            await self._drop(client)
            _end_if_cancelling(exc)
            raise StoreUnavailableError(f"etcd watch broke: {_describe(exc)}") from exc
        finally:
            if client is self._client:
                try:
                    await watch.cancel()
                except _DOWN as exc:
                    log.debug("cancelling a watch: %r", exc)
        # The stream ended without an error: its connection was closed under it.
        _end_if_cancelling()
        raise StoreUnavailableError("etcd watch ended: its connection was closed")


def _prefix_end(prefix: bytes) -> bytes:
    """The end of the range of keys that start with `prefix` (etcd's convention)."""
    raw = bytearray(prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


def _too_large(error: grpc.aio.AioRpcError) -> bool:
    """etcd refused the request for its size: over --max-request-bytes ("etcdserver:
    request is too large"), or over its gRPC receive limit (that plus 512 KiB)."""
    details = error.details() or ""
    return (error.code() == grpc.StatusCode.INVALID_ARGUMENT and "too large" in details) or (
        error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details)


def _timed_out(error: BaseException) -> bool:
    if isinstance(error, grpc.aio.AioRpcError):
        return bool(error.code() == grpc.StatusCode.DEADLINE_EXCEEDED)
    return isinstance(error, aetcd.exceptions.ConnectionTimeoutError | TimeoutError)


def _tls_failed(described: str) -> bool:
    """Whether a failure was TLS's (a handshake or certificate refused), not an outage."""
    return any(sign in described for sign in ("Tls handshake", "CERTIFICATE_VERIFY",
                                               "SSL_ERROR", "certificate required"))


def _describe(error: BaseException | None) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    text = str(error) or type(error).__name__
    return text.splitlines()[0] if text else repr(error)
