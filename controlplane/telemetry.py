"""The control plane's own Prometheus metrics, served on `--metrics-addr` (/metrics).

One `Telemetry` per `ControlPlane`, with its own `CollectorRegistry` (so several
control planes in one process, as in tests, do not collide; nothing is registered
in prometheus_client's global registry). It is fed by four seams:

* the xDS server's `XdsObserver` hooks (it implements them): connections, pushes,
  ACKs and NACKs;
* the publisher's `on_published` (`published`): when each group's new snapshot
  versions appeared, the start of the push latency;
* every desired state the store watch delivers (`observe_state`): rollout phase,
  weight and analysis verdicts, read from etcd, so every replica reports the same;
* the etcd client's `on_error` (`etcd_error`).

Metrics (all prefixed `controlplane_`):

    xds_connected_proxies{group}              gauge    open ADS/SDS streams
    xds_pushes_total{type_url}                counter  responses written
    xds_push_latency_seconds{type_url}        histogram  snapshot published → response
                                              written, for pushes a snapshot change caused
                                              (answers to requests are not counted)
    xds_acks_total{type_url}                  counter
    xds_nacks_total{type_url}                 counter
    rollout_phase{rollout,phase}              gauge    1 for the current phase, 0 for others
    rollout_weight_percent{rollout}           gauge    traffic on `to`, percent
    rollout_analysis_total{rollout,verdict}   counter  analysis checks seen (passed, failed,
                                              inconclusive), counted by every replica
    etcd_errors_total{operation}              counter  etcd calls that failed (per attempt)
    fleet_report_errors_total                 counter  writes of this replica's fleet report
                                                       that failed (each retried)
    metrics_ignored_total{reason}             counter  MetricsService flushes ignored:
                                              not_connected (the sender is no connected
                                              xDS proxy of its group here) or
                                              foreign_clusters (samples of clusters its
                                              group does not route to were dropped)
    dns_lookups_total{outcome}                counter  DNS lookups of endpoint names by the
                                              leader's resolver (ok, failed)
    dns_names_failing                         gauge    names whose last lookup failed (they
                                              keep their last good addresses); the
                                              leader's, 0 elsewhere

plus the process collector (`process_cpu_seconds_total`, `process_resident_memory_bytes`).
prometheus_client's metrics are thread-safe: its HTTP thread reads while the event
loop writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest, start_http_server

from controlplane.model.status import Phase

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from controlplane.model import DesiredState
    from controlplane.xds.snapshot import Snapshot

log = logging.getLogger(__name__)

PUSH_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0)


class Telemetry:
    """The metrics of one control plane replica; an `XdsObserver` for the xDS server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.proxies = Gauge("controlplane_xds_connected_proxies",
                               "Open xDS streams, by proxy group", ["group"], registry=r)
        self.pushes = Counter("controlplane_xds_pushes", "xDS responses written",
                              ["type_url"], registry=r)
        self.push_latency = Histogram(
            "controlplane_xds_push_latency_seconds",
            "From a snapshot's publication to a response carrying it written to a proxy",
            ["type_url"], buckets=PUSH_LATENCY_BUCKETS, registry=r)
        self.acks = Counter("controlplane_xds_acks", "xDS ACKs received", ["type_url"],
                            registry=r)
        self.nacks = Counter("controlplane_xds_nacks", "xDS NACKs received", ["type_url"],
                             registry=r)
        self.rollout_phase = Gauge("controlplane_rollout_phase",
                                   "1 for a rollout's current phase, 0 for the others",
                                   ["rollout", "phase"], registry=r)
        self.rollout_weight = Gauge("controlplane_rollout_weight_percent",
                                    "Percent of the upstream's traffic on the rollout's `to`",
                                    ["rollout"], registry=r)
        self.analysis = Counter("controlplane_rollout_analysis",
                                "Analysis checks of rollouts, by verdict",
                                ["rollout", "verdict"], registry=r)
        self.etcd_errors = Counter("controlplane_etcd_errors", "etcd calls that failed",
                                   ["operation"], registry=r)
        self.fleet_report_errors = Counter(
            "controlplane_fleet_report_errors",
            "writes of this replica's fleet report that failed (each is retried)", registry=r)
        # Labelled by reason only: node ids and groups are the sender's claim, unbounded.
        self.metrics_ignored = Counter(
            "controlplane_metrics_ignored",
            "MetricsService flushes ignored (wholly or in part), by reason",
            ["reason"], registry=r)
        self.dns_lookups = Counter("controlplane_dns_lookups",
                                   "DNS lookups of endpoint names, by outcome (ok, failed)",
                                   ["outcome"], registry=r)
        self.dns_failing = Gauge("controlplane_dns_names_failing",
                                 "Endpoint names whose last lookup failed (their last good "
                                 "addresses stay)", registry=r)
        # (group, type URL) → (version, monotonic time it was published)
        self._published: dict[tuple[str, str], tuple[str, float]] = {}
        self._rollouts: set[str] = set()
        self._last_checks: dict[str, Any] | None = None  # None: no state seen yet
        self._http: WSGIServer | None = None
        self._children: dict[tuple[int, str], Any] = {}

    # ---- XdsObserver -----------------------------------------------------------------

    def connected(self, group: str) -> None:
        self.proxies.labels(group=group).inc()

    def disconnected(self, group: str) -> None:
        self.proxies.labels(group=group).dec()

    def pushed(self, group: str, type_url: str, version: str, *, after_change: bool) -> None:
        self._child(self.pushes, type_url).inc()
        if not after_change:
            return
        published = self._published.get((group, type_url))
        if published is not None and published[0] == version:
            self._child(self.push_latency, type_url).observe(
                time.monotonic() - published[1])

    def acked(self, group: str, type_url: str) -> None:
        self._child(self.acks, type_url).inc()

    def nacked(self, group: str, type_url: str) -> None:
        self._child(self.nacks, type_url).inc()

    def _child(self, metric: Any, type_url: str) -> Any:
        # Called once per response and per ACK of every proxy: labels() is not free.
        key = (id(metric), type_url)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(type_url=type_url)
        return child

    # ---- the other seams -------------------------------------------------------------

    def published(self, snapshots: Mapping[str, Snapshot]) -> None:
        """The publisher's `on_published`: note when each type's version first appeared."""
        now = time.monotonic()
        for group, snapshot in snapshots.items():
            for type_url, version in snapshot.versions.items():
                seen = self._published.get((group, type_url))
                if seen is None or seen[0] != version:
                    self._published[(group, type_url)] = (version, now)

    def forget_groups(self, groups: list[str]) -> None:
        """The publisher's `on_forgotten`: these groups have no stream and no config; their
        labels go, or /metrics would grow with every group name a client ever claimed."""
        gone = set(groups)
        for group in gone:
            self.proxies.remove(group)
        for key in [k for k in self._published if k[0] in gone]:
            del self._published[key]

    def observe_state(self, state: DesiredState) -> None:
        """Rollout gauges from a state read from etcd; new analysis checks are counted
        (those already there when the first state arrives are not)."""
        checks: dict[str, Any] = {}
        for name in state.rollouts:
            status = state.status(name)
            for phase in Phase:
                self.rollout_phase.labels(rollout=name, phase=phase.value).set(
                    1.0 if status.phase == phase else 0.0)
            self.rollout_weight.labels(rollout=name).set(status.weight)
            check = status.last_check
            checks[name] = check
            if (check and self._last_checks is not None
                    and check != self._last_checks.get(name)):
                self.analysis.labels(rollout=name, verdict=str(check.get("verdict"))).inc()
        for gone in self._rollouts - set(state.rollouts):
            for phase in Phase:
                self.rollout_phase.remove(gone, phase.value)
            self.rollout_weight.remove(gone)
        self._rollouts = set(state.rollouts)
        self._last_checks = checks

    def ignored_metrics(self, reason: str) -> None:
        """The metrics receiver's `on_ignored`: one flush (or part of one) not counted."""
        self.metrics_ignored.labels(reason=reason).inc()

    def etcd_error(self, operation: str) -> None:
        """The etcd client's `on_error`: one failed call (or watch) to an endpoint."""
        self.etcd_errors.labels(operation=operation).inc()

    def dns_lookup(self, ok: bool) -> None:
        """The resolver's `on_lookup`: one lookup of an endpoint name."""
        self.dns_lookups.labels(outcome="ok" if ok else "failed").inc()

    def dns_names_failing(self, count: int) -> None:
        """The resolver's `on_failing`: names failing after a round of lookups."""
        self.dns_failing.set(count)

    def fleet_report_failed(self) -> None:
        """The fleet reporter's `on_error`: a write of the report failed."""
        self.fleet_report_errors.inc()

    # ---- exposition ------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (what /metrics answers)."""
        return generate_latest(self.registry)

    def serve(self, addr: str) -> int:
        """Serve /metrics on `addr` (HOST:PORT, port 0 picks one) in a daemon thread.

        Returns:
            The port bound.
        """
        host, _, port = addr.rpartition(":")
        self._http, _ = start_http_server(int(port), addr=host or "127.0.0.1",
                                          registry=self.registry)
        bound: int = self._http.server_port
        log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", bound)
        return bound

    def close(self) -> None:
        """Stop serving /metrics."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
