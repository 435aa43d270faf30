"""The leader's copy of leased keys into each version's endpoint set.

A version with `endpointsFrom: {etcd: PREFIX}` takes every key under PREFIX in etcd's
naming format (`discovery.naming`); one with `{registered: true}` takes what `endpoint
register` holds under `Keys.registered`. Only the leader watches those prefixes (one
watch each, `store.prefix.follow_prefix`: no polling) and writes what it finds to
`Keys.leased(upstream, version)`, fenced by its lease, so every replica renders the
same EDS from the same stored bytes. A key added, changed, deleted or expired with its
lease is written within `HOLD_OFF_S` of its watch event. A value not in the format is
skipped with one warning naming the key (again only if it changes to another bad
value). An empty or unknown prefix gives no address. Not user mutations: no audit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from controlplane.discovery.naming import naming_address, registration_from
from controlplane.errors import ControlPlaneError
from controlplane.model import DesiredState
from controlplane.model.endpoints import ETCD, LEASED, Discovered, discovered_to_json
from controlplane.store import Store
from controlplane.store.leader import Fence
from controlplane.store.prefix import follow_prefix

log = logging.getLogger(__name__)

HOLD_OFF_S = 0.05
"""A burst of key changes (a deployment's instances coming up) is written once."""
RETRY_S = 1.0
TXN_OPS = 100
"""Keys per write: under etcd's default --max-txn-ops (128), with the fence's own."""
Version = tuple[str, str]


@dataclass(frozen=True)
class Wanted:
    """Which leased sources each version takes: its etcd prefix, whether it registers."""

    prefixes: Mapping[Version, str] = field(default_factory=dict)
    registered: frozenset[Version] = frozenset()

    @classmethod
    def of(cls, state: DesiredState) -> Wanted:
        prefixes: dict[Version, str] = {}
        registered: set[Version] = set()
        for upstream in state.upstreams.values():
            for version, spec in upstream.spec.versions.items():
                source = spec.endpoints_from
                if source is not None and source.etcd is not None:
                    prefixes[(upstream.name, version)] = source.etcd
                if source is not None and source.registered:
                    registered.add((upstream.name, version))
        return cls(prefixes, frozenset(registered))

    def versions(self) -> set[Version]:
        return {*self.prefixes, *self.registered}

    def pending(self, listed: set[bytes], registered: bytes) -> set[Version]:
        """Versions a source of which is not listed yet: their sets are left as stored
        (a new leader does not empty them before its watches have read the keys)."""
        return {key for key in self.versions()
                if (key in self.prefixes and self.prefixes[key].encode() not in listed)
                or (key in self.registered and registered not in listed)}


def leased_sets(wanted: Wanted, by_prefix: Mapping[str, Mapping[bytes, str]],
                registrations: Mapping[Version, Mapping[bytes, Discovered]]
                ) -> dict[Version, tuple[Discovered, ...]]:
    """Pure: what each version's leased key should hold (versions with nothing left out),
    sorted by source then address, an address found twice once."""
    out: dict[Version, tuple[Discovered, ...]] = {}
    for key in sorted(wanted.versions()):
        found: list[Discovered] = []
        prefix = wanted.prefixes.get(key)
        if prefix is not None:
            found += [Discovered(address, ETCD + name.decode(errors="replace"))
                      for name, address in by_prefix.get(prefix, {}).items()]
        if key in wanted.registered:
            found += registrations.get(key, {}).values()
        unique: dict[str, Discovered] = {}
        for item in sorted(found, key=lambda d: (d.source, d.address)):
            unique.setdefault(item.address, item)
        if unique:
            out[key] = tuple(unique.values())
    return out


class LeasedEndpoints:
    """Watches and copies while this replica leads (`lead`, run by the LeaderElection).

    Args:
        state: the state now; `update` hands it each later one (the store watch).
    """

    def __init__(self, store: Store, state: DesiredState) -> None:
        self._store = store
        self._state = state
        self._wake = asyncio.Event()

    def update(self, state: DesiredState) -> None:
        """A new state: versions may take other prefixes now; look at once."""
        self._state = state
        self._wake.set()

    async def lead(self, fence: Fence) -> None:
        """Watch and write until cancelled (the leadership ends)."""
        written = {key: leased for key, items in self._state.discovered.items()
                   if (leased := tuple(i for i in items if i.source.startswith(LEASED)))}
        by_prefix: dict[str, dict[bytes, str]] = {}
        registrations: dict[Version, dict[bytes, Discovered]] = {}
        watches: dict[str, asyncio.Task[None]] = {}
        warned: dict[bytes, bytes] = {}  # key → the bad value it was warned about
        listed: set[bytes] = set()  # prefixes read whole at least once
        registered = self._store.keys.registered
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow(registered, warned, listed, lambda key, item:
                                           self._registered(registrations, key, item)))
            while True:
                self._wake.clear()
                wanted = Wanted.of(self._state)
                for prefix in set(wanted.prefixes.values()) - set(watches):
                    table = by_prefix.setdefault(prefix, {})
                    watches[prefix] = group.create_task(self._follow(
                        prefix.encode(), warned, listed, _into(table)))
                for prefix in set(watches) - set(wanted.prefixes.values()):
                    watches.pop(prefix).cancel()
                    by_prefix.pop(prefix, None)
                    listed.discard(prefix.encode())
                desired = leased_sets(wanted, by_prefix, registrations)
                try:
                    await self._write(fence, desired, written,
                                      wanted.pending(listed, registered))
                except ControlPlaneError as exc:  # etcd down, a write too large: retried
                    log.warning("leased endpoints not written (retried): %s", exc)
                    await asyncio.sleep(RETRY_S)
                    self._wake.set()
                await self._wake.wait()
                await asyncio.sleep(HOLD_OFF_S)  # the rest of a burst, in the same write

    async def _follow(self, prefix: bytes, warned: dict[bytes, bytes], listed: set[bytes],
                      store: Callable[[bytes, bytes | None], str | None]) -> None:
        """Feed `store` each key under `prefix` (None: gone; it answers why it skipped a
        value, or None), warn once per bad value, and wake the writer."""
        present: set[bytes] = set()
        async for change in follow_prefix(self._store.kv, prefix):
            if change.reset:  # listed again: what is not listed is gone
                for key in present - set(change.changes):
                    store(key, None)
                present.clear()
            for key, value in change.changes.items():
                why = store(key, value)
                if value is None:
                    present.discard(key)
                else:
                    present.add(key)
                if why is None or value is None:
                    warned.pop(key, None)
                elif warned.get(key) != value:
                    warned[key] = value
                    log.warning("etcd key %s skipped: %s", key.decode(errors="replace"), why)
            listed.add(prefix)
            self._wake.set()

    def _registered(self, registrations: dict[Version, dict[bytes, Discovered]],
                    key: bytes, value: bytes | None) -> str | None:
        upstream, version, _ = self._store.keys.parse_registration(key)
        table = registrations.setdefault((upstream, version), {})
        table.pop(key, None)
        if value is None:
            return None
        try:
            table[key] = registration_from(value)
        except ValueError as exc:
            return str(exc)
        return None

    async def _write(self, fence: Fence, desired: Mapping[Version, tuple[Discovered, ...]],
                     written: dict[Version, tuple[Discovered, ...]],
                     pending: set[Version]) -> None:
        """The sets that changed (but `pending` ones), in fenced transactions of at most
        `TXN_OPS` keys."""
        keys = self._store.keys
        ops: list[tuple[Version, tuple[Discovered, ...] | None]] = [
            (key, None) for key in written if key not in desired and key not in pending]
        ops += [(key, items) for key, items in desired.items()
                if written.get(key) != items and key not in pending]
        for start in range(0, len(ops), TXN_OPS):
            chunk = ops[start:start + TXN_OPS]
            revision = await self._store.commit(
                puts={keys.leased(*k): discovered_to_json(v) for k, v in chunk if v},
                deletes=[keys.leased(*k) for k, v in chunk if v is None], expect={},
                audit=[], lease=fence.lease, expect_values=fence.values)
            if revision is None:
                log.warning("leased endpoints not written: no longer the leader")
                return
            for key, items in chunk:
                if items is None:
                    written.pop(key, None)
                else:
                    written[key] = items
                log.info("leased endpoints of %s/%s: %s", *key, _summary(items or ()))


def _summary(items: tuple[Discovered, ...], most: int = 5) -> str:
    """A set for the log: a version of 10,000 keys is not one line of 10,000 addresses."""
    shown = ", ".join(d.address for d in items[:most]) or "none"
    return shown if len(items) <= most else f"{len(items)}: {shown}, ..."


def _into(table: dict[bytes, str]) -> Callable[[bytes, bytes | None], str | None]:
    """A prefix's keys, read in etcd's naming format, into `table` (key → address)."""
    def store(key: bytes, value: bytes | None) -> str | None:
        table.pop(key, None)
        if value is None:
            return None
        try:
            table[key] = naming_address(value)
        except ValueError as exc:
            return str(exc)
        return None
    return store
