"""Running leader work (the resolver, the leased keys' copy) as serve does: elected on a
real etcd, handed every new state the store watch sees."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from controlplane.model import DesiredState
from controlplane.store import LeaderElection, Store
from controlplane.store.leader import LeadWork


@contextlib.asynccontextmanager
async def leading(store: Store, work: LeadWork, update: Callable[[DesiredState], None],
                  *, ttl: int = 2) -> AsyncIterator[LeaderElection]:
    """`work` runs while elected; `update` gets each state; both end on exit."""

    async def follow() -> None:
        async for new, _ in store.watch_state():
            update(new)

    election = LeaderElection(store, "me", ttl=ttl)
    election.start(work)
    following = asyncio.create_task(follow())
    try:
        yield election
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await election.stop()
