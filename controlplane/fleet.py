"""The fleet's progress, fleet-wide: every replica reports what its proxies ACKed into
etcd (under its own lease, so a dead replica's proxies vanish with it), and the rollout
leader reads all reports. A step counts as applied only when every connected proxy of
the groups that route to the upstream has ACKed exactly the snapshot that carries it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from controlplane.errors import ControlPlaneError, StoreUnavailableError
from controlplane.model import DesiredState
from controlplane.rollout.engine import FleetProgress
from controlplane.rollout.traffic import retired_of, traffic_of
from controlplane.store import Store
from controlplane.translate import SecretMaterial, placeholder_material, translate
from controlplane.xds.proxies import ProxyRegistry
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from controlplane.xds.snapshot import Snapshot

log = logging.getLogger(__name__)

_CHECKED = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
REPORT_LEASE_TTL = 10
REPORT_COALESCE_S = 0.05
"""A replica writes its report again once its proxies were quiet this long..."""
REPORT_MAX_DELAY_S = 0.5
"""...or this long after the first change, whichever comes first."""
REPORT_SHARDS = 16
"""Keys a replica's report is spread over: ~450 bytes per proxy, so at `MAX_STREAMS`
(20,000) a shard holds ~560 KB, under etcd's default 1.5 MiB request limit."""


@dataclass(frozen=True)
class ProxyReport:
    """What one proxy has: ACKed version per type, and its NACKs (version, text)."""

    node_id: str
    group: str
    connected_at: float = 0.0
    acked: dict[str, str] = field(default_factory=dict)
    nacks: dict[str, tuple[str, str]] = field(default_factory=dict)



def encode(reports: Iterable[ProxyReport]) -> bytes:
    return _join(_fragment(r) for r in reports)


def _fragment(report: ProxyReport) -> str:
    # Not dataclasses.asdict: it deep-copies, and this runs for every ACK of a change.
    return json.dumps({"node_id": report.node_id, "group": report.group,
                       "connected_at": report.connected_at, "acked": report.acked,
                       "nacks": report.nacks}, sort_keys=True)


def _join(fragments: Iterable[str]) -> bytes:
    return ("[" + ", ".join(fragments) + "]").encode()  # what json.dumps of the list gives


def decode(raw: bytes) -> list[ProxyReport]:
    return [ProxyReport(r["node_id"], r["group"], r["connected_at"], r["acked"],
                        {k: (v[0], v[1]) for k, v in r["nacks"].items()})
            for r in json.loads(raw)]


def groups_routing_to(state: DesiredState, upstream: str) -> list[str]:
    """Proxy groups with a listener whose routes send traffic to `upstream`."""
    groups = set()
    for route in state.routes.values():
        listener = state.listeners.get(route.spec.listener)
        if route.spec.upstream == upstream and listener is not None:
            groups.add(listener.spec.group)
    return sorted(groups)


def progress_of(state: DesiredState, rollout: str, reports: Iterable[ProxyReport]
                ) -> FleetProgress:
    """Pure: how many proxies carry the config `state` implies for this rollout."""
    upstream = state.rollouts[rollout].spec.upstream
    groups = groups_routing_to(state, upstream)
    traffic, retired = traffic_of(state), retired_of(state)
    # Key material only reaches SDS, which is not compared: stand-ins give the same
    # CDS/EDS/LDS/RDS versions the publisher serves with the real certificates.
    material = placeholder_material(state)
    expected = {
        g: Snapshot.build(
            translate(state, group=g, traffic=traffic, secrets=material,
                      retired=retired).by_type_url()
        ).versions
        for g in groups
    }
    acked = total = 0
    nack: str | None = None
    for report in _latest(reports):
        if report.group not in expected:
            continue
        total += 1
        want = {u: expected[report.group][u] for u in _CHECKED
                if u in report.acked or u in report.nacks}
        if want and all(report.acked.get(u) == v for u, v in want.items()):
            acked += 1
            continue
        for url, version in want.items():
            rejected = report.nacks.get(url)
            if rejected and rejected[0] == version and report.acked.get(url) != version:
                nack = f"{report.node_id}: {rejected[1]}"
    return FleetProgress(acked, total, nack)


def _latest(reports: Iterable[ProxyReport]) -> list[ProxyReport]:
    # A proxy that moved to another replica may still be in the dead one's report
    # until its lease lapses: its newest stream is the one that counts.
    latest: dict[str, ProxyReport] = {}
    for report in reports:
        seen = latest.get(report.node_id)
        if seen is None or report.connected_at > seen.connected_at:
            latest[report.node_id] = report
    return list(latest.values())


def secrets_progress(state: DesiredState, material: SecretMaterial,
                     reports: Iterable[ProxyReport]) -> tuple[int, int]:
    """Pure: (proxies that ACKed the SDS version `material` gives their group, proxies
    holding secrets: those that ever ACKed or NACKed SDS). A CA rotation retires the
    previous CA when both are equal. A group that fails to translate counts as not ACKed."""
    traffic, retired = traffic_of(state), retired_of(state)
    expected: dict[str, str | None] = {}
    acked = total = 0
    for report in _latest(reports):
        if SECRET not in report.acked and SECRET not in report.nacks:
            continue
        if report.group not in expected:
            try:
                expected[report.group] = Snapshot.build(translate(
                    state, group=report.group, traffic=traffic, secrets=material,
                    retired=retired,
                ).by_type_url()).version(SECRET)
            except ControlPlaneError:
                expected[report.group] = None
        total += 1
        if expected[report.group] is not None and \
                report.acked.get(SECRET) == expected[report.group]:
            acked += 1
    return acked, total


class EtcdFleet:
    """FleetView over every replica's reports in etcd."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def reports(self) -> list[ProxyReport]:
        """Every replica's proxies, as last reported."""
        got = await self._store.kv.range(self._store.keys.fleet)
        return [r for kv in got.kvs for r in decode(kv.value)]

    async def progress(self, state: DesiredState, rollout: str) -> FleetProgress:
        return progress_of(state, rollout, await self.reports())


class ReportEncoder:
    """A registry's proxies as `encode`d shards ({shard: bytes}, empty ones left out), a
    proxy's shard set by its node id. Only the proxies whose ACKs or NACKs changed since
    the last call are encoded again (at 1,000 proxies a change brings 1,000 ACKs)."""

    def __init__(self, registry: ProxyRegistry, shards: int = REPORT_SHARDS) -> None:
        self._registry = registry
        self._shards = shards
        self._fragments: dict[tuple[int, int], tuple[int, str]] = {}

    def encode(self) -> dict[int, bytes]:
        fragments: dict[tuple[int, int], tuple[int, str]] = {}
        by_shard: dict[int, list[str]] = {}
        for handle in self._registry.handles():
            key = (handle.stream_id, handle.outcomes)
            known = self._fragments.get(key)
            if known is None:
                known = (zlib.crc32(handle.node_id.encode()) % self._shards,
                         _fragment(ProxyReport(
                             node_id=handle.node_id, group=handle.group,
                             connected_at=handle.connected_at,
                             acked=handle.acked_versions(), nacks=handle.nacks())))
            fragments[key] = known
            by_shard.setdefault(known[0], []).append(known[1])
        self._fragments = fragments
        return {shard: _join(parts) for shard, parts in sorted(by_shard.items())}


class FleetReporter:
    """Writes this replica's proxies to `{prefix}/fleet/{identity}/{shard}` whenever they
    change (only the shards that changed)."""

    def __init__(self, store: Store, registry: ProxyRegistry, identity: str) -> None:
        self._store = store
        self._registry = registry
        self._identity = identity
        self._encoder = ReportEncoder(registry)
        self._written: dict[int, bytes] = {}

    async def run(self) -> None:
        lease: int | None = None
        while True:
            current = self._encoder.encode()
            try:
                if lease is None:
                    lease = await self._store.kv.grant(REPORT_LEASE_TTL)
                    self._written = {}
                elif await self._store.kv.refresh(lease) <= 0:
                    lease = None
                    continue
                await self._write(current, lease)
            except StoreUnavailableError as exc:
                log.warning("fleet report: %s", exc)
                lease = None
                await asyncio.sleep(1.0)
                continue
            moved = functools.partial(self._moved, self._registry.generation)
            if await self._registry.wait_until(moved, timeout=REPORT_LEASE_TTL / 3):
                await self._settle()

    async def _settle(self) -> None:
        """Wait until the proxies are quiet for `REPORT_COALESCE_S` (`REPORT_MAX_DELAY_S`
        at most): a config change brings an ACK from every proxy, one by one; the report
        is written once for the burst, after it, not while the burst is being served."""
        deadline = asyncio.get_running_loop().time() + REPORT_MAX_DELAY_S
        while asyncio.get_running_loop().time() < deadline:
            generation = self._registry.generation
            await asyncio.sleep(REPORT_COALESCE_S)
            if self._registry.generation == generation:
                return

    def _moved(self, generation: int) -> bool:
        return self._registry.generation != generation

    async def _write(self, shards: dict[int, bytes], lease: int) -> None:
        # A shard holds the same proxies whatever the others do: a reader between two
        # of these writes sees each proxy once, at most a report behind.
        for shard, value in shards.items():
            if self._written.get(shard) != value:
                await self._store.kv.put(self._key(shard), value, lease=lease)
                self._written[shard] = value
        for shard in [s for s in self._written if s not in shards]:
            await self._store.kv.delete(self._key(shard))
            del self._written[shard]

    def _key(self, shard: int) -> bytes:
        return self._store.keys.fleet_shard(self._identity, shard)

    async def close(self) -> None:
        with contextlib.suppress(StoreUnavailableError):
            for shard in list(self._written):
                await self._store.kv.delete(self._key(shard))
                del self._written[shard]
