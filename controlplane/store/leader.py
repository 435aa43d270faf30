"""Leader election on an etcd lease, and the fence that keeps a deposed leader from writing.

The leader key holds this replica's identity, attached to its lease. Every write the
leader makes compares that key's value in the same transaction: once the lease
lapses (a partition, a pause), the key is gone and the late write is rejected.
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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fence:
    """Guards a leader's writes: `store.commit(..., expect_values=f.values)` fails once the
    leader key (held by `lease`) is gone or names another replica."""

    lease: int | None = None
    values: Mapping[bytes, bytes] = field(default_factory=dict)


NO_FENCE = Fence()


class LeaderElection:
    """Campaigns for `{prefix}/leader`; runs `lead(fence)` while elected.

    Args:
        identity: this replica's unique name (written as the leader key's value).
        ttl: lease seconds; a dead leader is replaced within about this long.
    """

    def __init__(self, store: Store, identity: str, *, ttl: int = 10) -> None:
        self._store = store
        self.identity = identity
        self.ttl = ttl
        self.is_leader = False

    async def run(self, lead: Callable[[Fence], Coroutine[Any, Any, None]]) -> None:
        """Forever: win the key, lead until the lease is lost, then campaign again."""
        while True:
            try:
                lease = await self._campaign()
            except StoreUnavailableError as exc:
                log.warning("leader election: %s", exc)
                await asyncio.sleep(1.0)
                continue
            fence = Fence(lease, {self._store.keys.leader: self.identity.encode()})
            self.is_leader = True
            log.info("%s is the leader (lease %x)", self.identity, lease)
            leading = asyncio.create_task(lead(fence), name="leader-work")
            keeping = asyncio.create_task(self._keep_alive(lease), name="leader-lease")
            try:
                done, _ = await asyncio.wait({leading, keeping},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        log.error("leader task failed: %r", task.exception())
            finally:
                self.is_leader = False
                for task in (leading, keeping):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                with contextlib.suppress(StoreUnavailableError):
                    await self._store.kv.revoke(lease)
            log.warning("%s lost the leadership; campaigning again", self.identity)

    async def _campaign(self) -> int:
        key = self._store.keys.leader
        while True:
            lease = await self._store.kv.grant(self.ttl)
            won = await self._store.kv.txn(
                expect={key: 0}, puts={key: self.identity.encode()}, lease=lease
            )
            if won:
                return lease
            await self._store.kv.revoke(lease)
            while await self._store.kv.get(key) is not None:  # noqa: ASYNC110 - polls etcd
                await asyncio.sleep(min(1.0, self.ttl / 5))

    async def _keep_alive(self, lease: int) -> None:
        """Returns (ending the leadership) once the lease cannot be shown to be alive."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                remaining = await self._store.kv.refresh(lease)
            except StoreUnavailableError as exc:
                log.warning("lease keep-alive failed: %s", exc)
                if time.monotonic() - last_ok > self.ttl * 2 / 3:
                    return  # assume it lapsed: stop acting as leader before it does
                continue
            if remaining <= 0:
                return
            last_ok = time.monotonic()
