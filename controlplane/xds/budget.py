"""How many bytes of responses are being written at once, across every stream.

A change of a large config goes to every proxy at once: 10,000 streams each writing
its own copy of a 5 MB CDS response would hold 50 GB. Each write first takes its size
from this budget and gives it back when gRPC has taken the message. Writes that fit
pass at once while nobody waits; waiters are served in order. A write that waited
`hold_s` goes anyway: proxies that stop reading must not keep the others waiting for
ever (what each of them holds is bounded: one unanswered response per type).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

PUSH_BUDGET_BYTES = 256 * 1024 * 1024
"""Default budget: ~50 writes of a 5 MB config in flight, thousands of small ones."""
PUSH_HOLD_S = 10.0
"""A write waits for room at most this long."""


class PushBudget:
    """A byte budget shared by the writes of every stream (see the module docstring).

    Not thread-safe: use from the event loop's thread.
    """

    def __init__(self, limit: int = PUSH_BUDGET_BYTES, hold_s: float = PUSH_HOLD_S) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.hold_s = hold_s
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = (
            collections.deque())

    async def write(self, size: int, send: Callable[[], Awaitable[None]]) -> None:
        """Run `send()` (a write of `size` bytes) once the budget has room for it."""
        size = min(size, self.limit)  # a write larger than the budget goes alone
        if self._waiters or self.used + size > self.limit:
            await self._wait(size)
        else:
            self.used += size  # the common case: no future, no timer
        try:
            await send()
        finally:
            self._release(size)

    async def _wait(self, size: int) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, granted))
        try:
            async with asyncio.timeout(self.hold_s):
                await asyncio.shield(granted)
        except TimeoutError:
            if not granted.done():
                # The writes ahead are stuck (proxies that stopped reading): go anyway
                # rather than wait on them for ever; they hold one response each at most.
                self._waiters.remove((size, granted))
                granted.cancel()
                self.used += size
                log.info("push budget: a %d-byte write waited %.0f s; writing it anyway "
                         "(%d of %d bytes in flight)", size, self.hold_s, self.used,
                         self.limit)
                self._wake()
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(size)  # granted, but its stream went away meanwhile
            else:
                self._waiters.remove((size, granted))
                granted.cancel()
                self._wake()  # it may have held up smaller writes behind it
            raise

    def _release(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            size, granted = self._waiters[0]
            if self.used + size > self.limit:
                return
            self._waiters.popleft()
            self.used += size
            granted.set_result(None)
