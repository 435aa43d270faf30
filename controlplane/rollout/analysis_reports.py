"""Fleet-wide analysis reports: every replica writes its proxies' recent per-second
request counts and their endpoint health to etcd (a `LeasedReport`, like the fleet's ACK
report), and the rollout leader adds up all replicas' reports to judge a rollout's `to`
version.

"Metrics" means three things in this code base; this module is the middle one:
what proxies push (`controlplane.analysis`, Envoy's MetricsService) → per-replica
analysis reports in etcd (here) → the leader's verdicts. The control plane's own
Prometheus /metrics are `controlplane.telemetry`, unrelated to analysis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from controlplane.analysis import Check, Window, judge, version_cluster
from controlplane.analysis import health as health_report
from controlplane.analysis.health import HealthBoard, Membership
from controlplane.analysis.window import RETENTION_S, decode, encode, total
from controlplane.model import DesiredState
from controlplane.rollout.engine import AnalysisProvider
from controlplane.store import Store
from controlplane.store.report import LeasedReport

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.5
"""How often a replica writes its slots (when they changed): the analysis lag past
Envoy's 1 s flush."""


class AnalysisReporter:
    """Writes this replica's window to `{prefix}/metrics/{identity}` and its proxies'
    endpoint health to `{prefix}/health/{identity}` while they change."""

    def __init__(self, store: Store, window: Window, identity: str, *,
                 health: HealthBoard | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._window = window
        self._health = health if health is not None else HealthBoard()
        self._key = store.keys.request_counts_member(identity)
        self._health_key = store.keys.health_member(identity)
        self._clock = clock
        self._report = LeasedReport(store.kv, f"analysis report of replica {identity}")

    async def run(self) -> None:
        await self._report.run(self._values, self._pause)

    def _values(self) -> dict[bytes, bytes]:
        self._window.prune(self._clock())
        return {self._key: encode(self._window.slots),
                self._health_key: health_report.encode(self._health.summary())}

    @staticmethod
    async def _pause() -> None:
        await asyncio.sleep(REPORT_EVERY_S)

    async def close(self) -> None:
        await self._report.close()


class ByProvider:
    """Sends each rollout's check to the provider its `analysis.provider` names."""

    def __init__(self, providers: Mapping[str, AnalysisProvider]) -> None:
        self._providers = providers

    async def check(self, state: DesiredState, rollout: str, now: float) -> Check:
        analysis = state.rollouts[rollout].spec.analysis
        assert analysis is not None, "only rollouts with `analysis` are checked"
        return await self._providers[analysis.provider].check(state, rollout, now)


class EtcdAnalysis:
    """AnalysisProvider over every replica's metrics reports in etcd."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def check(self, state: DesiredState, rollout: str, now: float) -> Check:
        """Judge the rollout's `to` version over the time since its step was applied
        (or since the last check), at most the reports' retention (2 minutes) back.

        Errors:
            StoreUnavailableError: etcd cannot be read (the engine holds the rollout).
        """
        spec = state.rollouts[rollout].spec
        assert spec.analysis is not None, "only rollouts with `analysis` are checked"
        status = state.status(rollout)
        start = max(status.since, now - RETENTION_S)
        got = await self._store.kv.range(self._store.keys.request_counts)
        reports = []
        for kv in got.kvs:
            try:
                reports.append(decode(kv.value))
            except (ValueError, KeyError, TypeError) as exc:  # one bad report, not a dead leader
                log.warning("analysis report %s unreadable: %s", kv.key.decode(), exc)
        counts = total(reports, version_cluster(spec.upstream, spec.to), start=start, end=now)
        baseline = total(reports, version_cluster(spec.upstream, spec.from_), start=start,
                         end=now)
        return judge(spec.analysis, counts, baseline, version=spec.to,
                     baseline_version=spec.from_, start=start, now=now)

    async def health(self, cluster: str) -> Membership:
        """One cluster's endpoint health over every replica's proxies.

        Errors:
            StoreUnavailableError: etcd cannot be read (the engine holds the rollout).
        """
        got = await self._store.kv.range(self._store.keys.health)
        reports = []
        for kv in got.kvs:
            try:
                reports.append(health_report.decode(kv.value))
            except (ValueError, TypeError) as exc:
                log.warning("health report %s unreadable: %s", kv.key.decode(), exc)
        return health_report.fleet(reports, cluster)
