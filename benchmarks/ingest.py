"""What analysis ingestion costs: CPU per Envoy stats flush, and the share of a core that
N proxies flushing every `--interval` seconds take.

A flush is built like Envoy's (`envoy.stat_sinks.metrics_service`, tags as labels,
counters as deltas): for each of `--clusters` clusters the ~60 counters, ~20 gauges and
~5 histograms Envoy keeps per cluster, plus ~300 server/listener/http families; about
50 KB, as measured from a real Envoy 1.40. Our path (`receiver.read_flush` + window +
health board) is timed against the baseline of parsing the whole message with
envoy-data-plane, in the same run.

    .venv/bin/python -m benchmarks.ingest [--proxies 1000] [--interval 10] [--json]

Target (a goal, not a test): 1,000 proxies every 10 s cost well under a core (≤ 0.25).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from controlplane.analysis.health import HealthBoard
from controlplane.analysis.receiver import read_flush
from controlplane.analysis.window import Window

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # envoy-data-plane on import
    from envoy_data_plane.envoy.service.metrics.v3 import StreamMetricsMessage
    from envoy_data_plane.io.prometheus.client import (
        Bucket,
        Counter,
        Gauge,
        Histogram,
        LabelPair,
        Metric,
        MetricFamily,
        MetricType,
    )

TARGET_CORES = 0.25
_BOUNDS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
           300000, 600000, 1800000, 3600000]


def _label(cluster: str, **extra: str) -> list[LabelPair]:
    return [LabelPair(name="envoy.cluster_name", value=cluster),
            *(LabelPair(name=f"envoy.{k}", value=v) for k, v in extra.items())]


def flush(clusters: int) -> bytes:
    """One StreamMetricsMessage of a proxy routing to `clusters` upstream versions."""
    names = [f"svc{i}|v{i % 3 + 1}" for i in range(clusters)]
    families: list[MetricFamily] = []
    for k in range(60):
        name = {0: "cluster.upstream_rq_xx", 1: "cluster.upstream_rq"}.get(k, f"cluster.c{k}")
        metrics = []
        for c in names:
            if k == 0:
                metrics += [Metric(label=_label(c, response_code_class=cls),
                                   counter=Counter(value=n)) for cls, n in (("2", 95), ("5", 5))]
            elif k == 1:
                metrics += [Metric(label=_label(c, response_code=code),
                                   counter=Counter(value=n)) for code, n in (("200", 95),
                                                                           ("503", 5))]
            else:
                metrics.append(Metric(label=_label(c), counter=Counter(value=k)))
        families.append(MetricFamily(name=name, type=MetricType.COUNTER, metric=metrics))
    for k in range(20):
        name = {0: "cluster.membership_healthy", 1: "cluster.membership_total"}.get(
            k, f"cluster.g{k}")
        families.append(MetricFamily(name=name, type=MetricType.GAUGE, metric=[
            Metric(label=_label(c), gauge=Gauge(value=3)) for c in names]))
    for k in range(5):
        name = "cluster.upstream_rq_time" if k == 0 else f"cluster.h{k}"
        families.append(MetricFamily(name=name, type=MetricType.HISTOGRAM, metric=[
            Metric(label=_label(c), histogram=Histogram(
                sample_count=100, sample_sum=900.0,
                bucket=[Bucket(upper_bound=b, cumulative_count=min(100, int(b * 10)))
                        for b in _BOUNDS])) for c in names]))
    for k in range(300):  # server.*, listener.*, http.* families with one series each
        families.append(MetricFamily(name=f"server.s{k}", type=MetricType.COUNTER,
                                     metric=[Metric(counter=Counter(value=k))]))
    return bytes(StreamMetricsMessage(envoy_metrics=families))


def _ours(raw: bytes, n: int) -> float:
    window, board = Window(), HealthBoard()
    start = time.process_time()
    for i in range(n):
        counts, membership = read_flush(raw)
        now = 1_000_000.0 + i * 0.01
        window.add(now, counts)
        board.update(i % 1000, now, membership)
    return (time.process_time() - start) / n


def _baseline(raw: bytes, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        StreamMetricsMessage.parse(raw)
    return (time.process_time() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0, help="stats flush, seconds")
    parser.add_argument("--clusters", type=int, default=6, help="clusters per proxy")
    parser.add_argument("--samples", type=int, default=200, help="flushes timed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    raw = flush(args.clusters)
    ours = _ours(raw, args.samples)
    baseline = _baseline(raw, max(5, args.samples // 20))
    cores = ours * args.proxies / args.interval
    row = {"proxies": args.proxies, "interval_s": args.interval, "flush_bytes": len(raw),
           "ours_us_per_flush": round(ours * 1e6, 1),
           "full_parse_us_per_flush": round(baseline * 1e6, 1),
           "speedup": round(baseline / ours, 1), "cores": round(cores, 4),
           "target_cores": TARGET_CORES, "pass": cores <= TARGET_CORES}
    if args.json:
        print(json.dumps(row))
    else:
        print(f"flush {len(raw)} bytes, {args.clusters} clusters")
        print(f"ours       {row['ours_us_per_flush']:>10} µs/flush")
        print(f"full parse {row['full_parse_us_per_flush']:>10} µs/flush  "
              f"(ours is {row['speedup']}x faster)")
        print(f"{args.proxies} proxies every {args.interval:g} s: {cores:.3f} cores "
              f"(target ≤ {TARGET_CORES}) {'PASS' if row['pass'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
