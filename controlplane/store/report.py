"""A replica's report in etcd, held by the replica's own lease: it vanishes with the replica.

Two reports use it: what this replica's proxies ACKed (`controlplane.fleet`) and their
request counts and endpoint health for analysis (`controlplane.rollout.analysis_reports`).
Each says what to write and when; this class owns the rest, once: the lease and its
keep-alive, writing only the keys whose value changed, deleting the keys no longer
reported, retrying a failed write, and deleting the report when the replica stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from controlplane.errors import ControlPlaneError, StoreUnavailableError
from controlplane.store.kv import EtcdKV

log = logging.getLogger(__name__)

REPORT_LEASE_TTL = 10
"""Seconds a dead replica's report outlives it."""
REPORT_RETRY_S = 1.0
"""How often a write that failed is tried again."""


class LeasedReport:
    """Keys in etcd under one lease of this replica, kept equal to what it last reported.

    Args:
        kv: the etcd connection.
        what: names the report in logs, e.g. "fleet report of replica cp-1".
        ttl: the lease's seconds; it is kept alive every `ttl / 3` while writes go on.
        retry_s: the pause before a failed write is tried again.
        on_error: called once per failed write (a metric); must not block or raise.
    """

    def __init__(self, kv: EtcdKV, what: str, *, ttl: int = REPORT_LEASE_TTL,
                 retry_s: float = REPORT_RETRY_S,
                 on_error: Callable[[], None] | None = None) -> None:
        self._kv = kv
        self._what = what
        self._ttl = ttl
        self._retry_s = retry_s
        self._on_error = on_error
        self._lease: int | None = None
        self._refreshed = 0.0
        self._written: dict[bytes, bytes] = {}
        self.failing = ""
        """Why the last write failed ("" once one succeeds)."""

    async def write(self, values: Mapping[bytes, bytes]) -> None:
        """Make the report hold exactly `values`: changed keys are put (in `values`'
        order), keys no longer in it deleted after, so a reader between two puts sees
        each entry at least once.

        Errors:
            StoreUnavailableError: etcd did not answer; the lease is given up (a new one
                is granted on the next write, and every key written again).
            ControlPlaneError: etcd refused a write (e.g. too large).
        """
        lease = await self._live_lease()
        try:
            for key, value in values.items():
                if self._written.get(key) != value:
                    await self._kv.put(key, value, lease=lease)
                    self._written[key] = value
            for key in [k for k in self._written if k not in values]:
                await self._kv.delete(key)
                del self._written[key]
        except StoreUnavailableError:
            # Whether the lease still lives is unknown: a new one makes the next write whole.
            self._lease = None
            raise

    async def _live_lease(self) -> int:
        now = time.monotonic()
        if self._lease is not None and now - self._refreshed >= self._ttl / 3:
            try:
                if await self._kv.refresh(self._lease) <= 0:
                    self._lease = None  # expired, and its keys with it
            except StoreUnavailableError:
                self._lease = None
                raise
            self._refreshed = now
        if self._lease is None:
            self._lease = await self._kv.grant(self._ttl)
            self._refreshed = now
            self._written = {}  # nothing is under the new lease yet
        return self._lease

    async def run(self, collect: Callable[[], Mapping[bytes, bytes]],
                  wait: Callable[[], Awaitable[object]]) -> None:
        """Write `collect()`, then `await wait()`, until cancelled. `wait` must return
        within `ttl / 3` to keep the lease alive. A write that fails is logged once,
        counted on `on_error` and retried every `retry_s` with what `collect()` then
        gives: a report is never silently lost."""
        while True:
            try:
                await self.write(collect())
            except ControlPlaneError as exc:
                if not self.failing:
                    log.error("%s not written, retrying every %g s: %s",
                              self._what, self._retry_s, exc)
                self.failing = str(exc)
                if self._on_error is not None:
                    self._on_error()
                await asyncio.sleep(self._retry_s)
                continue
            if self.failing:
                log.warning("%s written again", self._what)
                self.failing = ""
            await wait()

    async def close(self) -> None:
        """Delete what this report wrote. With etcd down, the lease expires it instead."""
        with contextlib.suppress(StoreUnavailableError):
            for key in list(self._written):
                await self._kv.delete(key)
                del self._written[key]
