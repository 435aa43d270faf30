"""The leader's resolver: every DNS name any Upstream version lists, looked up at its
TTL (clamped to [1 s, 30 s]), its addresses written to etcd when they change.

Only the leader resolves, and it writes what it found under the store's state range
(`Keys.discovered`), fenced by its lease like the rollout engine's writes, so every
replica renders the same EDS from the same bytes and a step's ACK means the same
everywhere. A name that stops resolving keeps its last good addresses (nothing is
rewritten); a name never resolved gives no address. How each name's last lookup
went is written beside (`Keys.dns_name`), outside the state range, for `get endpoints`.
These are not user mutations: no audit entry, a log line when a set changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from controlplane.discovery.lookup import MAX_TTL_S, MIN_TTL_S, Lookup
from controlplane.errors import ControlPlaneError, ResolutionError
from controlplane.model import DesiredState
from controlplane.model.endpoints import (
    DNS,
    Discovered,
    HostPort,
    discovered_to_json,
    parse_endpoint,
)
from controlplane.store import Store
from controlplane.store.leader import Fence

log = logging.getLogger(__name__)

CONCURRENT_LOOKUPS = 64
TXN_OPS = 100
"""Keys per write: under etcd's default --max-txn-ops (128), with the fence's own."""
STATUS_REFRESH_S = 30.0
"""A name's `resolvedAt` in etcd is refreshed this often at most (not at every lookup:
1,000 names at a 1 s TTL would be 1,000 writes a second)."""
FAILURE_LOG_S = 60.0
"""A name that keeps failing is logged again after this long, not at every retry."""
Version = tuple[str, str]


@dataclass
class NameState:
    """What the leader knows of one name."""

    addresses: tuple[str, ...] | None = None
    """The last good answer (None: never resolved)."""
    next_at: float = 0.0
    error: str | None = None
    failing_since: float | None = None
    resolved_at: float | None = None
    retry_s: float = MIN_TTL_S
    logged_at: float = field(default=-FAILURE_LOG_S)
    written: dict[str, object] | None = None
    written_at: float = 0.0

    def record(self) -> dict[str, object]:
        return {"resolvedAt": self.resolved_at, "error": self.error,
                "failingSince": self.failing_since,
                "addresses": list(self.addresses or ())}


def names_by_version(state: DesiredState) -> dict[Version, list[HostPort]]:
    """(upstream, version) → its name endpoints, in the order written."""
    out: dict[Version, list[HostPort]] = {}
    for upstream in state.upstreams.values():
        for version, spec in upstream.spec.versions.items():
            names = [hp for hp in map(parse_endpoint, spec.endpoints) if hp.is_name]
            if names:
                out[(upstream.name, version)] = names
    return out


def discovered_sets(wanted: Mapping[Version, list[HostPort]],
                    names: Mapping[str, NameState]) -> dict[Version, tuple[Discovered, ...]]:
    """Pure: what each version's key should hold (versions with nothing left out)."""
    out: dict[Version, tuple[Discovered, ...]] = {}
    for key, endpoints in wanted.items():
        found: list[Discovered] = []
        for hp in endpoints:
            known = names.get(hp.host)
            for ip in (known.addresses or ()) if known else ():
                found.append(Discovered(HostPort(ip, hp.port, False).address(), DNS + hp.host))
        if found:
            out[key] = tuple(sorted(set(found), key=lambda d: (d.source, d.address)))
    return out


class NameResolver:
    """Resolves while this replica leads (`lead`, run by the LeaderElection).

    Args:
        state: the state now; `update` hands it each later one (the store watch).
        on_lookup: called with whether each lookup succeeded (the metric).
        on_failing: called with how many names are failing after each round.
    """

    def __init__(self, store: Store, lookup: Lookup, state: DesiredState, *,
                 on_lookup: Callable[[bool], None] = lambda ok: None,
                 on_failing: Callable[[int], None] = lambda n: None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._lookup = lookup
        self._state = state
        self._on_lookup = on_lookup
        self._on_failing = on_failing
        self._clock = clock
        self._monotonic = monotonic
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(CONCURRENT_LOOKUPS)

    def update(self, state: DesiredState) -> None:
        """A new state: names may have come or gone; look at once."""
        self._state = state
        self._wake.set()

    async def lead(self, fence: Fence) -> None:
        """Resolve and write until cancelled (the leadership ends)."""
        names: dict[str, NameState] = {}
        stale: set[str] = set()  # names no longer used whose status key is not deleted yet
        # The last leader's answers: our last good (the leased sets have their own writer).
        written = {key: dns for key, items in self._state.discovered.items()
                   if (dns := tuple(i for i in items if i.source.startswith(DNS)))}
        for items in written.values():
            for item in items:
                if item.source.startswith(DNS):
                    state = names.setdefault(item.source[len(DNS):], NameState())
                    ip = parse_endpoint(item.address).host
                    state.addresses = tuple(sorted({*(state.addresses or ()), ip}))
        while True:
            self._wake.clear()
            wanted = names_by_version(self._state)
            used = {hp.host for hps in wanted.values() for hp in hps}
            for name in set(names) - used:
                del names[name]
                stale.add(name)
            stale -= used
            now = self._monotonic()
            due = [n for n in sorted(used) if names.setdefault(n, NameState()).next_at <= now]
            await asyncio.gather(*(self._resolve(n, names[n]) for n in due))
            self._on_failing(sum(1 for s in names.values() if s.error is not None))
            try:
                await self._write(fence, wanted, names, written, stale)
            except ControlPlaneError as exc:  # etcd down, a write too large: not fatal
                log.warning("discovered addresses not written (retried): %s", exc)
                for state in names.values():
                    state.next_at = min(state.next_at, self._monotonic() + MIN_TTL_S)
            pause = min((s.next_at for s in names.values()), default=now + MAX_TTL_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, pause - self._monotonic())):
                    await self._wake.wait()

    async def _resolve(self, name: str, state: NameState) -> None:
        async with self._limit:
            try:
                answer = await self._lookup.resolve(name)
            except ResolutionError as exc:
                self._failed(name, state, str(exc))
                return
        self._on_lookup(True)
        if state.addresses != answer.addresses:
            log.info("dns %s: %s (was %s)", name, ", ".join(answer.addresses),
                     "unresolved" if state.addresses is None else
                     ", ".join(state.addresses) or "none")
        if state.error is not None:
            log.info("dns %s resolves again", name)
        state.addresses, state.error, state.failing_since = answer.addresses, None, None
        state.resolved_at = self._clock()
        state.retry_s = MIN_TTL_S
        state.next_at = self._monotonic() + answer.ttl

    def _failed(self, name: str, state: NameState, reason: str) -> None:
        self._on_lookup(False)
        now = self._monotonic()
        if state.error is None:
            state.failing_since = self._clock()
        if state.error is None or now - state.logged_at >= FAILURE_LOG_S:
            state.logged_at = now
            log.warning("dns %s does not resolve: %s; %s", name, reason,
                        "no addresses until it does" if state.addresses is None else
                        "keeping its last addresses " + ", ".join(state.addresses))
        state.error = reason
        state.next_at = now + state.retry_s
        state.retry_s = min(MAX_TTL_S, state.retry_s * 2)  # back off on a dead name

    async def _write(self, fence: Fence, wanted: Mapping[Version, list[HostPort]],
                     names: Mapping[str, NameState],
                     written: dict[Version, tuple[Discovered, ...]], stale: set[str]) -> None:
        """Fenced transactions of at most `TXN_OPS` keys (etcd's --max-txn-ops is 128):
        the versions whose sets changed first, then the names whose status is new or
        due, and the keys of names no version uses any more (`stale`, until deleted)."""
        keys = self._store.keys
        desired = discovered_sets(wanted, names)
        ops: list[tuple[bytes, bytes | None, Callable[[], object]]] = []
        for key in [k for k in written if k not in desired]:
            ops.append((keys.discovered(*key), None, functools.partial(written.pop, key)))
        for key, items in desired.items():
            if written.get(key) != items:
                ops.append((keys.discovered(*key), discovered_to_json(items),
                            functools.partial(written.__setitem__, key, items)))
        now = self._monotonic()
        for name, state in names.items():
            record = state.record()
            if record != state.written or now - state.written_at >= STATUS_REFRESH_S:
                ops.append((keys.dns_name(name), json.dumps(record).encode(),
                            functools.partial(_noted, state, record, now)))
        for name in sorted(stale):
            ops.append((keys.dns_name(name), None, functools.partial(stale.discard, name)))
        for start in range(0, len(ops), TXN_OPS):
            chunk = ops[start:start + TXN_OPS]
            revision = await self._store.commit(
                puts={k: v for k, v, _ in chunk if v is not None}, expect={}, audit=[],
                deletes=[k for k, v, _ in chunk if v is None],
                lease=fence.lease, expect_values=fence.values)
            if revision is None:
                log.warning("discovered addresses not written: no longer the leader")
                return
            for _, _, done in chunk:
                done()


def _noted(state: NameState, record: dict[str, object], at: float) -> None:
    state.written, state.written_at = record, at
