"""The fleet's progress, fleet-wide: every replica reports what its proxies ACKed into
etcd (under its own lease, so a dead replica's proxies vanish with it), and the rollout
leader reads all reports. A step counts as applied only when every connected proxy of
the groups that route to the upstream has ACKed exactly the snapshot that carries it."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controlplane.errors import ControlPlaneError
from controlplane.model import DesiredState
from controlplane.rollout.engine import FleetProgress
from controlplane.stage import RenderStage, secret_material
from controlplane.store import Store
from controlplane.store.report import REPORT_LEASE_TTL, LeasedReport
from controlplane.translate import SecretMaterial
from controlplane.translate.trace import trace_nack
from controlplane.xds.proxies import ProxyRegistry
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

if TYPE_CHECKING:
    from controlplane.secrets import Material

log = logging.getLogger(__name__)

_CHECKED = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
REPORT_COALESCE_S = 0.05
"""A replica writes its report again once its proxies were quiet this long..."""
REPORT_MAX_DELAY_S = 0.5
"""...or this long after the first change, whichever comes first."""
REPORT_SHARDS = 16
"""Keys a replica's report is spread over at least; doubled while a shard would be over
`MAX_SHARD_BYTES` (~450 bytes per Envoy, ~3 KB at most for a proxy with maximal ids and
NACK texts: 20,000 of those take 64 shards)."""
MAX_SHARD_BYTES = 1024 * 1024
"""One shard's value at most: under etcd's default 1.5 MiB request limit with room to
spare (a write over it is refused, and a report not written is no report)."""
MAX_REPORT_SHARDS = 4096
_REPORTED = frozenset({CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET})
"""Types a report carries: all that progress compares. A stream may subscribe to other
type URLs of its choosing; none of those may grow the report."""
REPORT_RETRY_S = 1.0


@dataclass(frozen=True)
class ProxyReport:
    """What one proxy has: ACKed version per type, and its NACKs (version, text)."""

    node_id: str
    group: str
    connected_at: float = 0.0
    acked: dict[str, str] = field(default_factory=dict)
    nacks: dict[str, tuple[str, str]] = field(default_factory=dict)
    serial: str = ""
    """The stream's client certificate serial ("" without TLS)."""

    @property
    def identity(self) -> tuple[str, str]:
        return (self.group, self.node_id)


def encode(reports: Iterable[ProxyReport]) -> bytes:
    return _join(_fragment(r) for r in reports)


def _fragment(report: ProxyReport) -> str:
    # Not dataclasses.asdict: it deep-copies, and this runs for every ACK of a change.
    return json.dumps({"node_id": report.node_id, "group": report.group,
                       "connected_at": report.connected_at, "serial": report.serial,
                       "acked": {u: v for u, v in report.acked.items() if u in _REPORTED},
                       "nacks": {u: v for u, v in report.nacks.items() if u in _REPORTED}},
                      sort_keys=True)


def _join(fragments: Iterable[str]) -> bytes:
    return ("[" + ", ".join(fragments) + "]").encode()  # what json.dumps of the list gives


def decode(raw: bytes) -> list[ProxyReport]:
    return [ProxyReport(r["node_id"], r["group"], r["connected_at"], r["acked"],
                        {k: (v[0], v[1]) for k, v in r["nacks"].items()},
                        r.get("serial", ""))
            for r in json.loads(raw)]


def groups_routing_to(state: DesiredState, upstream: str) -> list[str]:
    """Proxy groups with a listener whose routes send traffic to `upstream`."""
    groups = set()
    for route in state.routes.values():
        listener = state.listeners.get(route.spec.listener)
        if route.spec.upstream == upstream and listener is not None:
            groups.add(listener.spec.group)
    return sorted(groups)


def progress_of(state: DesiredState, rollout: str, reports: Iterable[ProxyReport],
                stage: RenderStage | None = None) -> FleetProgress:
    """Pure (`stage` only memoizes): how many proxies carry the config `state` implies
    for this rollout, a NACK of it if any, and the groups that must carry it."""
    upstream = state.rollouts[rollout].spec.upstream
    groups = groups_routing_to(state, upstream)
    stage = stage if stage is not None else RenderStage()
    expected = {g: stage.versions(state, g) for g in groups}
    acked = total = 0
    nack: str | None = None
    for identity, claimants in _proxies(reports).items():
        versions = expected.get(identity[0])
        if versions is None:
            continue
        total += 1
        wants = [{u: versions[u] for u in _CHECKED if u in r.acked or u in r.nacks}
                 for r in claimants]
        if all(want and all(r.acked.get(u) == v for u, v in want.items())
               for r, want in zip(claimants, wants, strict=True)):
            acked += 1
            continue
        for report, want in zip(claimants, wants, strict=True):
            for url, version in want.items():
                rejected = report.nacks.get(url)
                if rejected and rejected[0] == version and report.acked.get(url) != version:
                    nack = f"{report.node_id}: {trace_nack(rejected[1])}"
    return FleetProgress(acked, total, nack, tuple(groups))


def _proxies(reports: Iterable[ProxyReport]) -> dict[tuple[str, str], list[ProxyReport]]:
    """Each proxy, (group, node id), with the streams that speak for it. A proxy that
    moved to another replica may still be in the dead one's report until its lease
    lapses: with the same client certificate its newest stream is the one that counts.
    A stream with another certificate is another claimant, never a replacement: each
    must ACK, and a NACK of any counts (a node id is not a credential)."""
    by_identity: dict[tuple[str, str], list[ProxyReport]] = {}
    for report in reports:
        by_identity.setdefault(report.identity, []).append(report)
    out: dict[tuple[str, str], list[ProxyReport]] = {}
    for identity, streams in by_identity.items():
        streams.sort(key=lambda r: r.connected_at, reverse=True)
        newest: dict[str, ProxyReport] = {}
        for stream in streams:
            newest.setdefault(stream.serial, stream)
        out[identity] = list(newest.values())
    return out


def fleet_acked_secrets(store: Store, stage: RenderStage
                        ) -> Callable[[DesiredState, Material], Awaitable[bool]]:
    """For a CA rotation (SecretSync): whether every connected proxy (every replica's
    report) ACKed the secrets `material` gives its group, before a CA is retired."""
    async def acked(state: DesiredState, material: Material) -> bool:
        done, total = secrets_progress(state, secret_material(material),
                                       await EtcdFleet(store).reports(), stage)
        log.debug("CA rotation: %d of %d proxies ACKed the new certificates", done, total)
        return done == total
    return acked


def secrets_progress(state: DesiredState, material: SecretMaterial,
                     reports: Iterable[ProxyReport],
                     stage: RenderStage | None = None) -> tuple[int, int]:
    """Pure: (proxies that ACKed the SDS version `material` gives their group, proxies
    holding secrets: those that ever ACKed or NACKed SDS). A CA rotation retires the
    previous CA when both are equal. A group that fails to translate counts as not ACKed."""
    stage = stage if stage is not None else RenderStage()
    expected: dict[str, str | None] = {}
    acked = total = 0
    for (group, _), claimants in _proxies(reports).items():
        holding = [r for r in claimants if SECRET in r.acked or SECRET in r.nacks]
        if not holding:
            continue
        if group not in expected:
            try:
                expected[group] = stage.snapshot(state, group, material).version(SECRET)
            except ControlPlaneError:
                expected[group] = None
        total += 1
        if expected[group] is not None and all(
                r.acked.get(SECRET) == expected[group] for r in holding):
            acked += 1
    return acked, total


class EtcdFleet:
    """FleetView over every replica's reports in etcd, compared with `stage`'s renders."""

    def __init__(self, store: Store, stage: RenderStage | None = None) -> None:
        self._store = store
        self._stage = stage if stage is not None else RenderStage()

    async def reports(self) -> list[ProxyReport]:
        """Every replica's proxies, as last reported."""
        got = await self._store.kv.range(self._store.keys.fleet)
        return [r for kv in got.kvs for r in decode(kv.value)]

    async def progress(self, state: DesiredState, rollout: str) -> FleetProgress:
        return progress_of(state, rollout, await self.reports(), self._stage)


class ReportEncoder:
    """A registry's proxies as `encode`d shards ({shard: bytes}, empty ones left out), a
    proxy's shard set by its node id. Only the proxies whose ACKs or NACKs changed since
    the last call are encoded again (at 1,000 proxies a change brings 1,000 ACKs).

    `shards` doubles while a shard would pass `limit` bytes, and halves again once half
    as many hold the proxies with a quarter to spare (no flapping at the edge): whatever
    clients send (ids and NACK texts are bounded), no shard is over etcd's limit."""

    def __init__(self, registry: ProxyRegistry, shards: int = REPORT_SHARDS,
                 limit: int = MAX_SHARD_BYTES) -> None:
        self._registry = registry
        self._least = self.shards = shards
        self._limit = limit
        self._fragments: dict[tuple[int, int], tuple[int, str]] = {}

    def encode(self) -> dict[int, bytes]:
        fragments: dict[tuple[int, int], tuple[int, str]] = {}
        for handle in self._registry.handles():
            key = (handle.stream_id, handle.outcomes)
            known = self._fragments.get(key)
            if known is None:
                known = (zlib.crc32(handle.node_id.encode()),
                         _fragment(ProxyReport(
                             node_id=handle.node_id, group=handle.group,
                             connected_at=handle.connected_at,
                             acked=handle.acked_versions(), nacks=handle.nacks(),
                             serial=handle.peer_serial)))
            fragments[key] = known
        self._fragments = fragments
        while self.shards < MAX_REPORT_SHARDS and \
                _largest(fragments.values(), self.shards) > self._limit:
            self.shards *= 2
        while self.shards > self._least and \
                _largest(fragments.values(), self.shards // 2) * 4 <= self._limit * 3:
            self.shards //= 2
        by_shard: dict[int, list[str]] = {}
        for crc, fragment in fragments.values():
            by_shard.setdefault(crc % self.shards, []).append(fragment)
        return {shard: _join(parts) for shard, parts in sorted(by_shard.items())}


def _largest(fragments: Iterable[tuple[int, str]], shards: int) -> int:
    sizes: dict[int, int] = {}
    for crc, fragment in fragments:
        sizes[crc % shards] = sizes.get(crc % shards, 2) + len(fragment) + 2
    return max(sizes.values(), default=0)


class FleetReporter:
    """Writes this replica's proxies to `{prefix}/fleet/{identity}/{shards}.{shard}`
    whenever they change (only the shards that changed), as a `LeasedReport`: a write
    that fails is retried and counted on `on_error`, a report is never silently lost."""

    def __init__(self, store: Store, registry: ProxyRegistry, identity: str, *,
                 encoder: ReportEncoder | None = None,
                 on_error: Callable[[], None] | None = None) -> None:
        self._store = store
        self._registry = registry
        self._identity = identity
        self._encoder = encoder if encoder is not None else ReportEncoder(registry)
        self._report = LeasedReport(store.kv, f"fleet report of replica {identity}",
                                    on_error=on_error)

    @property
    def failing(self) -> str:
        """Why the last write failed ("" once one succeeds)."""
        return self._report.failing

    async def run(self) -> None:
        await self._report.run(self._shards, self._next_change)

    def _shards(self) -> dict[bytes, bytes]:
        # A shard holds the same proxies whatever the others do: a reader between two
        # of the report's writes sees each proxy once, at most a report behind. When the
        # shard count changes, the new shards are all written before the old ones go: a
        # reader may see a proxy twice then (progress counts it once), never not at all.
        shards = self._encoder.encode()
        count = self._encoder.shards
        return {self._store.keys.fleet_shard(self._identity, count, shard): value
                for shard, value in shards.items()}

    async def _next_change(self) -> None:
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

    async def close(self) -> None:
        await self._report.close()
