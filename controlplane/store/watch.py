"""Following the desired state in etcd: one consistent state per change, for ever.

The watch covers specs and statuses (`Keys.state_range`). On an event the state is
re-read in one consistent read, so a multi-key transaction is always seen whole, and
events the read already covers are skipped (a burst costs one read, not one per key).

etcd going away is normal: the watch retries with back-off and resumes from the last
revision it saw, so no change is missed. If etcd compacted that revision meanwhile,
the state is re-read in full instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

from controlplane.errors import StoreUnavailableError
from controlplane.model import DesiredState
from controlplane.store.keys import Keys
from controlplane.store.kv import Compacted, EtcdKV

log = logging.getLogger(__name__)

RETRY_MIN_S, RETRY_MAX_S = 0.1, 2.0


class Backoff:
    """Delays that double from `first` up to `cap`; `reset()` after a success."""

    def __init__(self, first: float = RETRY_MIN_S, cap: float = RETRY_MAX_S) -> None:
        self._first, self._cap = first, cap
        self.delay = first

    def reset(self) -> None:
        self.delay = self._first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self._cap)


async def watch_state(
    kv: EtcdKV, keys: Keys, load: Callable[[], Awaitable[tuple[DesiredState, int]]]
) -> AsyncGenerator[tuple[DesiredState, int], None]:
    """The state now, then again after every change to it, for as long as it is iterated.

    Yields (state, revision): `revision` is the etcd revision the state was read at.
    A state equal to the last one yielded is not yielded again.
    """
    backoff = Backoff()
    start, end = keys.state_range
    state_keys = (keys.resources, keys.statuses)
    last: DesiredState | None = None
    seen: int | None = None  # None: (re-)list before watching
    while True:
        try:
            if seen is None:
                state, seen = await load()
                backoff.reset()
                if state != last:
                    last = state
                    yield state, seen
            async with contextlib.aclosing(kv.watch(start, seen + 1, end)) as events:
                async for event in events:
                    backoff.reset()
                    if event.mod_revision <= seen or not event.key.startswith(state_keys):
                        continue  # already part of the last read, or not state (secrets)
                    state, revision = await load()
                    seen = max(revision, event.mod_revision)
                    if state != last:
                        last = state
                        yield state, revision
        except Compacted as exc:
            log.warning("watch from revision %d: %s; re-reading the whole state",
                        (seen or 0) + 1, exc)
            seen = None
        except StoreUnavailableError as exc:
            log.warning("%s; resuming the watch from revision %s in %.1fs",
                        exc, "(start)" if seen is None else seen + 1, backoff.delay)
            await backoff.wait()
