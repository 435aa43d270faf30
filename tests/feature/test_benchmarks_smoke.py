"""The benchmarks run end to end at tiny sizes and print their documented JSON fields.

No timing is asserted: the numbers are goals the benchmarks print, not tests. The six
runs start together (each on its own free ports) so the module takes about as long as
the slowest. vs_sovereign is left out: it pip-installs sovereign from PyPI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks._common import RawServer
from controlplane.server import GC_YOUNG_THRESHOLD

REPO = Path(__file__).resolve().parents[2]

RUNS: dict[str, list[str]] = {
    "convergence": ["--proxies", "5", "--fleet-processes", "1", "--real-envoys", "1",
                    "--rounds", "2"],
    "memory": ["--proxies", "5", "--fleet-processes", "1", "--settle", "0.2"],
    "reconnect": ["--proxies", "5", "--fleet-processes", "1", "--timeout", "60"],
    "large_config": ["--clusters", "50", "--endpoints", "500", "--repeat", "1",
                     "--streams", "5"],
    "ingest": ["--proxies", "5", "--samples", "5"],
    "gc_threshold": ["--proxies", "5", "--fleet-processes", "1", "--rounds", "1"],
}


@pytest.fixture(scope="module")
def outputs() -> Iterator[dict[str, list[dict[str, Any]]]]:
    """Each benchmark's JSON lines, all six run at once."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{name}", *args, "--json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, args in RUNS.items()
    }
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"benchmarks.{name} failed:\n{err[-3000:]}"
            results[name] = [json.loads(line) for line in out.splitlines() if line.strip()]
        yield results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _one(outputs: dict[str, list[dict[str, Any]]], name: str) -> dict[str, Any]:
    rows = outputs[name]
    assert len(rows) == 1, rows
    return rows[0]


def test_convergence_prints_its_fields(outputs: dict[str, list[dict[str, Any]]]) -> None:
    row = _one(outputs, "convergence")
    assert row["proxies"] == 5
    for key in ("p50_ms", "p99_ms", "raw_p99_ms", "ratio", "real_p50_ms", "real_p99_ms"):
        assert row[key] > 0, key
    assert row["cpu_ms_per_change"] >= 0 and row["raw_cpu_ms_per_change"] >= 0
    assert row["real_envoys"] == 1  # a real Envoy applied every change (calibration)
    assert row["rounds"] == 2 and len(row["ratios"]) == len(row["cpu_ratios"]) == 2
    assert min(row["ratios"]) <= row["ratio"] <= max(row["ratios"])  # their median
    assert row["ratio_target"] in ("PASS", "FAIL")


def test_memory_prints_kb_per_proxy(outputs: dict[str, list[dict[str, Any]]]) -> None:
    row = _one(outputs, "memory")
    assert row["proxies"] == 5
    assert isinstance(row["kb_per_proxy"], (int, float))
    assert row["rss_none_kb"] > 0 and row["rss_kb"] > 0
    assert row["raw_rss_none_kb"] > 0 and row["raw_rss_kb"] > 0  # gRPC alone, same run
    assert isinstance(row["raw_kb_per_proxy"], (int, float))
    assert row["result"] in ("PASS", "FAIL")


def test_ingest_prints_cost_per_flush(outputs: dict[str, list[dict[str, Any]]]) -> None:
    row = _one(outputs, "ingest")
    assert row["proxies"] == 5 and row["interval_s"] == 10.0
    assert row["flush_bytes"] > 0
    assert row["ours_us_per_flush"] > 0 and row["full_parse_us_per_flush"] > 0
    assert row["cores"] >= 0 and isinstance(row["pass"], bool)


def test_large_config_prints_sizes(outputs: dict[str, list[dict[str, Any]]]) -> None:
    row = _one(outputs, "large_config")
    assert row["clusters"] == 50 and row["endpoints"] == 500
    assert row["translate_ms"] > 0
    assert 0 < row["delta_bytes"] < row["sotw_bytes"]
    assert row["changed_types"] == "ClusterLoadAssignment"  # one endpoint: EDS only
    assert {row["translate_target"], row["delta_target"]} <= {"PASS", "FAIL"}
    assert row["streams"] == 5
    assert row["sotw_push_us_per_proxy"] > 0 and row["delta_push_us_per_proxy"] > 0


def test_reconnect_serves_every_proxy_again(outputs: dict[str, list[dict[str, Any]]]) -> None:
    row = _one(outputs, "reconnect")
    assert row["proxies"] == 5
    assert row["not_served"] == 0
    assert row["cpu_s"] > 0
    assert row["all_served_s"] > 0
    assert row["peak_rss_kb"] > 0


def test_gc_threshold_compares_the_default_with_serves(
        outputs: dict[str, list[dict[str, Any]]]) -> None:
    rows = outputs["gc_threshold"]
    assert [r["gc_threshold"] for r in rows] == [700, GC_YOUNG_THRESHOLD]
    for row in rows:
        assert row["proxies"] == 5 and row["changes"] == 20
        assert row["p99_ms"] > 0 and row["cpu_ms_per_change"] >= 0
        assert row["young_per_change"] >= 0 and row["gc_ms_per_change"] >= 0
    # gc_threshold is what each serve process had (gc.get_threshold() in it): the
    # wrapper's setting took, and serve_command did not override it.


@pytest.mark.parametrize("pushes", [True, False], ids=["convergence", "memory"])
def test_raw_server_collects_as_serve_does(pushes: bool) -> None:
    """With CPython's default threshold the baseline paid for collections serve never
    runs, and every ratio to it flattered us."""
    raw = RawServer(b"", pushes=pushes)
    try:
        assert raw.gc_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        raw.close()
