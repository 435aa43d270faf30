"""Analysis, pure parts: parsing a MetricsService flush, windows, sums and verdicts."""

from __future__ import annotations

import math
import warnings

import pytest

from controlplane.analysis import (
    FAILED,
    INCONCLUSIVE,
    PASSED,
    Counts,
    Window,
    evaluate,
    judge,
    version_cluster,
)
from controlplane.analysis.receiver import counts_of, families
from controlplane.analysis.window import decode, encode, total
from controlplane.model.resources import Analysis
from controlplane.translate.names import cluster_name

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # envoy-data-plane on import
    from envoy_data_plane.io.prometheus.client import (
        Bucket,
        Counter,
        Histogram,
        LabelPair,
        Metric,
        MetricFamily,
        MetricType,
    )


def _counter(name: str, value: int, **labels: str) -> MetricFamily:
    return MetricFamily(name=name, type=MetricType.COUNTER, metric=[Metric(
        label=[LabelPair(name=k.replace("_", ".", 1), value=v) for k, v in labels.items()],
        counter=Counter(value=value))])


def _histogram(cluster: str, buckets: dict[float, int]) -> MetricFamily:
    return MetricFamily(name="cluster.upstream_rq_time", type=MetricType.HISTOGRAM, metric=[
        Metric(label=[LabelPair(name="envoy.cluster_name", value=cluster)],
               histogram=Histogram(sample_count=max(buckets.values()), bucket=[
                   Bucket(upper_bound=b, cumulative_count=c) for b, c in buckets.items()]))])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: StreamMetricsMessage built by hand, with an
    identifier the parser must skip."""
    key, length, out = (number << 3) | 2, len(payload), bytearray()
    out.append(key)
    while length >= 0x80:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out) + payload


def _flush() -> bytes:
    v2 = "payments|v2"
    identifier = _field(1, _field(1, b"edge-1") + _field(2, b"edge"))  # identifier.node
    return identifier + b"".join(_field(2, bytes(family)) for family in [
            _counter("server.uptime", 5),
            _counter("cluster.upstream_rq_xx", 70, envoy_cluster_name=v2,
                     envoy_response_code_class="2"),
            _counter("cluster.upstream_rq_xx", 30, envoy_cluster_name=v2,
                     envoy_response_code_class="5"),
            _counter("cluster.upstream_rq_xx", 8, envoy_cluster_name=v2,
                     envoy_response_code_class="4"),
            _counter("cluster.upstream_rq", 5, envoy_cluster_name=v2, envoy_response_code="403"),
            _counter("cluster.upstream_rq", 2, envoy_cluster_name=v2, envoy_response_code="401"),
            _counter("cluster.upstream_rq", 1, envoy_cluster_name=v2, envoy_response_code="404"),
            _counter("cluster.upstream_rq_total", 108, envoy_cluster_name=v2),
            _counter("cluster.upstream_rq_xx", 9, envoy_cluster_name="xds_cluster",
                     envoy_response_code_class="2"),
            _histogram(v2, {5.0: 50, 25.0: 100, 250.0: 107, 1000.0: 108}),
    ])


def test_families_parses_only_the_wanted_ones() -> None:
    names = [f.name for f in families(_flush())]
    assert sorted(set(names)) == ["cluster.upstream_rq", "cluster.upstream_rq_time",
                                  "cluster.upstream_rq_xx"]


def test_counts_of_a_flush() -> None:
    counts = counts_of(_flush())
    v2 = counts["payments|v2"]
    assert (v2.requests, v2.server_errors, v2.auth_failures) == (108, 30, 7)
    assert v2.latency_samples == 108 and v2.quantile_ms(0.99) == 250.0
    assert "xds_cluster" not in counts  # only upstream versions


def test_garbage_is_an_error_not_a_hang() -> None:
    with pytest.raises((ValueError, IndexError)):
        counts_of(b"\x12\xff\xff\xff")


def test_version_cluster_matches_translate() -> None:
    assert version_cluster("payments", "v2") == cluster_name("payments", "v2")


def test_window_slots_prune_and_sum_over_reports() -> None:
    window = Window(retention_s=10)
    window.add(100.2, {"a": Counts(10, 1, 0)})
    window.add(100.9, {"a": Counts(5, 0, 1), "b": Counts(3)})
    window.add(104.0, {"a": Counts(20, 2, 0)})
    assert window.slots[100]["a"].requests == 15
    other = {104: {"a": Counts(7, 7, 0)}}
    assert total([window.slots, other], "a", start=103.5, end=105).requests == 27
    assert total([window.slots], "a", start=0, end=105).server_errors == 3
    assert total([window.slots], "b", start=101.5, end=105).requests == 0
    window.add(111.0, {"a": Counts(1)})
    assert sorted(window.slots) == [104, 111]


def test_encode_decode_round_trip() -> None:
    slots = {7: {"p|v2": Counts(10, 2, 1, {5.0: 8, 25.0: 10}, 10)}}
    back = decode(encode(slots))
    assert back == slots


@pytest.mark.parametrize(
    ("counts", "verdict", "words"),
    [
        pytest.param(Counts(), INCONCLUSIVE, "no data", id="no-traffic"),
        pytest.param(Counts(19, 19, 0), INCONCLUSIVE, "no data", id="below-min-requests"),
        pytest.param(Counts(100, 0, 0), PASSED, "successRate 1.000", id="healthy"),
        pytest.param(Counts(100, 30, 0), FAILED, "successRate 0.700 < 0.95", id="5xx"),
        pytest.param(Counts(100, 0, 5), FAILED, "authFailureRate 0.050 > 0.01", id="403s"),
        pytest.param(Counts(100, 0, 0, {25.0: 90, 1000.0: 100}, 100), FAILED,
                     "p99 latency 1000 ms > 200 ms", id="slow"),
        pytest.param(Counts(100, 0, 0, {25.0: 100}, 100), PASSED, "p99 25 ms", id="fast"),
    ],
)
def test_evaluate(counts: Counts, verdict: str, words: str) -> None:
    analysis = Analysis.model_validate({"minRequests": 20, "successRate": 0.95,
                                        "p99LatencyMs": 200, "authFailureRate": 0.01})
    check = evaluate(analysis, counts, version="v2", start=1.0, now=3.0)
    assert check.verdict == verdict
    assert words in check.detail
    doc = check.document()
    assert doc["thresholds"] == {"minRequests": 20, "successRate": 0.95, "p99LatencyMs": 200,
                                 "authFailureRate": 0.01}
    assert doc["requests"] == counts.requests and doc["windowStart"] == 1.0


def test_latency_beyond_the_last_bucket() -> None:
    counts = Counts(10, 0, 0, {5.0: 1}, 10)
    assert counts.quantile_ms(0.99) == math.inf
    analysis = Analysis.model_validate({"minRequests": 1, "p99LatencyMs": 100})
    check = evaluate(analysis, counts, version="v2", start=0, now=1)
    assert check.verdict == FAILED and check.document()["p99LatencyMs"] is None


@pytest.mark.parametrize(("baseline", "verdict"), [
    pytest.param(Counts(100, 40, 0), INCONCLUSIVE, id="from-fails-too"),
    pytest.param(Counts(100, 0, 0), FAILED, id="from-healthy"),
    pytest.param(Counts(), FAILED, id="from-without-traffic"),
])
def test_a_fleet_wide_outage_is_not_blamed_on_the_new_version(baseline: Counts,
                                                              verdict: str) -> None:
    analysis = Analysis.model_validate({"minRequests": 20, "successRate": 0.95})
    check = judge(analysis, Counts(100, 30, 0), baseline, version="v2",
                  baseline_version="v1", start=0, now=1)
    assert check.verdict == verdict
    if verdict == INCONCLUSIVE:
        assert "v1 fails as well" in check.detail and "0.700" in check.detail
