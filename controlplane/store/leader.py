"""Leader election on an etcd lease, and the fence that keeps a deposed leader from writing.

The leader key `{prefix}/leader` holds the leader's identity and is attached to its
lease: it is created only when absent (create revision 0), kept alive every ttl/3,
and vanishes when the leader resigns (lease revoked) or dies (lease expires).

Fencing, twice over: every write the leader makes compares the leader key's value in
the same transaction (`Fence.values`), and `Store.commit(lease=...)` lands only while
the lease is alive. Once the lease lapses (a partition, a long pause) the late write
is rejected. The written keys are not attached to the lease: rollout status and
audit entries outlive the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import StoreUnavailableError
from controlplane.store.store import Store
from controlplane.store.watch import Backoff

log = logging.getLogger(__name__)

RESIGN_TIMEOUT_S = 2.0
"""How long resigning (revoking the leader lease) may take before it is left to expire."""


@dataclass(frozen=True)
class Fence:
    """Guards a leader's writes: `store.commit(..., lease=f.lease, expect_values=f.values)`.

    Attributes:
        lease: the write lands only while this lease is alive (None: no such check).
        values: key → value that must still hold (the leader key → our identity).
    """

    lease: int | None = None
    values: Mapping[bytes, bytes] = field(default_factory=dict)


NO_FENCE = Fence()

LeadWork = Callable[[Fence], Coroutine[Any, Any, None]]


def together(*works: LeadWork) -> LeadWork:
    """One leader's work made of several (the rollout engine, the resolver): they run
    side by side; one that fails ends the others, and so the leadership."""
    async def lead(fence: Fence) -> None:
        async with asyncio.TaskGroup() as group:
            for work in works:
                group.create_task(work(fence))
    return lead


class LeaderElection:
    """Campaigns for `{prefix}/leader`; runs `lead(fence)` while elected.

    Args:
        identity: this replica's unique name (written as the leader key's value).
        ttl: lease seconds; a dead leader is replaced within about ttl + ttl/5.
    """

    def __init__(self, store: Store, identity: str, *, ttl: int = 10) -> None:
        self._store = store
        self.identity = identity
        self.ttl = ttl
        self.is_leader = False
        self.lease_id: int | None = None
        """The lease held while leading (None otherwise)."""
        self._task: asyncio.Task[None] | None = None

    @property
    def fence(self) -> Fence:
        """The guard for this leader's writes (rejected once it is no longer the leader)."""
        return Fence(self.lease_id, {self._store.keys.leader: self.identity.encode()})

    def start(self, lead: Callable[[Fence], Coroutine[Any, Any, None]]) -> None:
        """`run(lead)` in a task of its own; end it with `stop()`."""
        self._task = asyncio.create_task(self.run(lead), name=f"leader-election-{self.identity}")

    async def stop(self) -> None:
        """Stop campaigning; if leading, cancel `lead` and resign (the key goes at once)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self, lead: Callable[[Fence], Coroutine[Any, Any, None]]) -> None:
        """Forever: win the key, lead until the lease is lost, then campaign again.

        Cancelling it resigns. `lead` is cancelled when the leadership ends.
        """
        backoff = Backoff(0.5, 5.0)
        while True:
            try:
                lease = await self._campaign()
            except StoreUnavailableError as exc:
                log.warning("leader election: %s", exc)
                await backoff.wait()
                continue
            backoff.reset()
            self.lease_id, self.is_leader = lease, True
            log.info("%s is the leader (lease %x)", self.identity, lease)
            leading = asyncio.create_task(lead(self.fence), name="leader-work")
            keeping = asyncio.create_task(self._keep_alive(lease), name="leader-lease")
            failed = False
            try:
                done, _ = await asyncio.wait({leading, keeping},
                                             return_when=asyncio.FIRST_COMPLETED)
                if leading in done and not leading.cancelled() and leading.exception():
                    log.error("leader work failed: %r", leading.exception())
                    failed = True
            finally:
                self.is_leader, self.lease_id = False, None
                for task in (leading, keeping):
                    task.cancel()
                for task in (leading, keeping):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                await self._resign(lease)
            log.warning("%s is no longer the leader; campaigning again", self.identity)
            if failed:
                await backoff.wait()  # do not flap on work that fails at once

    async def _resign(self, lease: int) -> None:
        """Revoke the lease (the key goes with it), for `RESIGN_TIMEOUT_S` at most: when
        etcd is gone, the lease expires by itself, and stopping must not wait on it."""
        try:
            async with asyncio.timeout(RESIGN_TIMEOUT_S):
                await self._store.kv.revoke(lease)
        except (StoreUnavailableError, TimeoutError) as exc:
            log.warning("%s could not resign (%s); the leadership ends when lease %x "
                        "expires, within %ds", self.identity,
                        str(exc) or f"no answer in {RESIGN_TIMEOUT_S:g}s", lease, self.ttl)

    async def _campaign(self) -> int:
        """Wait until the key is free, then take it; returns the lease it is held by."""
        key, me = self._store.keys.leader, self.identity.encode()
        kv = self._store.kv
        while True:
            current = await kv.get(key)
            if current is None:
                lease = await kv.grant(self.ttl)
                try:
                    won = await kv.txn(expect={key: 0}, puts={key: me}, lease=lease)
                except BaseException:
                    with contextlib.suppress(StoreUnavailableError):
                        await kv.revoke(lease)
                    raise
                if won:
                    return lease
                await kv.revoke(lease)
            await asyncio.sleep(min(1.0, self.ttl / 5))

    async def _keep_alive(self, lease: int) -> None:
        """Returns (ending the leadership) once the lease cannot be shown to be ours."""
        key, me = self._store.keys.leader, self.identity.encode()
        kv = self._store.kv
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                remaining = await kv.refresh(lease)
                holder = await kv.get(key)
            except StoreUnavailableError as exc:
                log.warning("leader lease keep-alive failed: %s", exc)
                if time.monotonic() - last_ok > self.ttl * 2 / 3:
                    return  # assume it lapsed: stop acting as leader before it does
                continue
            if remaining <= 0:
                log.warning("the leader lease expired")
                return
            if holder is None or holder.value != me or holder.lease != lease:
                log.warning("the leader key is no longer ours")
                return
            last_ok = time.monotonic()
