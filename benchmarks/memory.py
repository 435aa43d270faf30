"""Memory per idle proxy: RSS of `controlplane serve` with N connected proxies, minus none.

    .venv/bin/python -m benchmarks.memory --proxies 1000 [--delta] [--json]

For each N: start `controlplane serve` (embedded etcd, a separate process that is not
counted) in a subprocess, apply the edge listener, route and upstream, let it settle and
read the serve process's VmRSS from /proc/PID/status (the median of a few reads). Then
connect N simulated Envoys (benchmarks/fleet.py), wait until each has its route
configuration and ACKed it, settle again and read VmRSS once more.
kb_per_proxy = (rss_with_n - rss_with_none) / N. Then the same for the raw server of
benchmarks/_common.py without pushes (a bare grpc.aio ADS server with serve's GC
threshold and gRPC options whose handler sends the route response our server sent
and reads the ACKs, nothing else per stream): raw_kb_per_proxy is what grpc.aio alone
costs per idle proxy. Target (a goal,
printed, not asserted): ≤ 30 KB per idle connected proxy.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    RawServer,
    ServeProcess,
    apply_documents,
    edge_documents,
    fleet_parser,
    report,
)
from benchmarks.fleet import Fleet

TARGET_KB_PER_PROXY = 30.0


def _settled_rss_kb(server: ServeProcess | RawServer, settle: float, reads: int = 5) -> int:
    """VmRSS after `settle` seconds: the median of `reads` reads 0.2 s apart."""
    time.sleep(settle)
    samples = []
    for _ in range(reads):
        samples.append(server.rss_kb())
        time.sleep(0.2)
    return int(statistics.median(samples))


def measure(proxies: int, *, delta: bool, processes: int, settle: float,
            timeout: float) -> dict[str, Any]:
    """One row: the serve process's RSS with none and with `proxies` idle proxies, and
    the raw server's the same way."""
    with tempfile.TemporaryDirectory(prefix="cp-bench-mem-") as tmp:
        serve = ServeProcess(Path(tmp) / "data", Path(tmp) / "serve.log")
        try:
            apply_documents(serve.admin_port, edge_documents())
            base = _settled_rss_kb(serve, settle)
            fleet = Fleet.start(f"127.0.0.1:{serve.xds_port}", proxies=proxies,
                                processes=processes, delta=delta, timeout=timeout)
            try:
                loaded = _settled_rss_kb(serve, settle)
                route = fleet.route_bytes()[-1]
            finally:
                fleet.close()
            peak = serve.rss_kb("VmHWM")
        finally:
            serve.stop()
    raw_base, raw_loaded = _raw_rss_kb(route, proxies, delta=delta, processes=processes,
                                       settle=settle, timeout=timeout)
    per_proxy = (loaded - base) / proxies
    return {
        "proxies": proxies,
        "protocol": "delta" if delta else "sotw",
        "rss_none_kb": base,
        "rss_kb": loaded,
        "peak_rss_kb": peak,
        "kb_per_proxy": round(per_proxy, 2),
        "raw_rss_none_kb": raw_base,
        "raw_rss_kb": raw_loaded,
        "raw_kb_per_proxy": round((raw_loaded - raw_base) / proxies, 2),
        "target": f"<= {TARGET_KB_PER_PROXY:g} KB",
        "result": "PASS" if per_proxy <= TARGET_KB_PER_PROXY else "FAIL",
    }


def _raw_rss_kb(route: bytes, proxies: int, *, delta: bool, processes: int, settle: float,
                timeout: float) -> tuple[int, int]:
    """The raw server's VmRSS with no proxy and with `proxies` holding `route`."""
    raw = RawServer(route, pushes=False)
    try:
        base = _settled_rss_kb(raw, settle)
        fleet = Fleet.start(f"127.0.0.1:{raw.port}", proxies=proxies, processes=processes,
                            delta=delta, timeout=timeout)
        try:
            return base, _settled_rss_kb(raw, settle)
        finally:
            fleet.close()
    finally:
        raw.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = fleet_parser(__doc__, default_proxies=1000, default_timeout=120.0)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds to wait before reading RSS (default 2)")
    args = parser.parse_args(argv)
    report((measure(n, delta=args.delta, processes=args.fleet_processes,
                    settle=args.settle, timeout=args.timeout) for n in args.proxies),
           as_json=args.json)
    return 0

if __name__ == "__main__":
    sys.exit(main())
