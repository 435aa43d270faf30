"""Route-change convergence: admin API apply → every proxy has ACKed the new route.

    .venv/bin/python -m benchmarks.convergence --proxies 100 [--delta] [--json]

For each N: start `controlplane serve` (embedded etcd) in a subprocess, connect N
simulated Envoys (benchmarks/fleet.py) in other processes, then flip an Upstream's
`spec.active` between v1 and v2 through Admin.Apply, `--changes` times. One sample is
the time from just before Apply until the last of the N proxies has written its ACK
of the new RouteConfiguration. Then the raw limit: a bare grpc.aio server writes the
same RouteConfiguration response bytes to N streams of a fresh fleet, same count;
ratio = ours_p99 / raw_p99. Targets (goals, printed, not asserted): 1,000 proxies
p99 ≤ 100 ms, ratio ≤ 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import RawServer, control_plane, percentile
from benchmarks.fleet import Fleet
from controlplane.api import admin_pb2, admin_pb2_grpc

TARGET_P99_MS = 100.0
TARGET_PROXIES = 1000
TARGET_RATIO = 1.5


def _documents(active: str) -> list[str]:
    """examples/edge.yaml's listener, route and upstream, with `active` as the version."""
    meta = {"apiVersion": "controlplane/v1"}
    docs: list[dict[str, Any]] = [
        {**meta, "kind": "Listener", "metadata": {"name": "edge-http"},
         "spec": {"group": "edge", "port": 10000}},
        {**meta, "kind": "Route", "metadata": {"name": "payments"},
         "spec": {"listener": "edge-http", "hosts": ["*"], "prefix": "/",
                  "upstream": "payments"}},
        {**meta, "kind": "Upstream", "metadata": {"name": "payments"},
         "spec": {"active": active,
                  "versions": {"v1": {"endpoints": ["127.0.0.1:9001"]},
                               "v2": {"endpoints": ["127.0.0.1:9002"]}},
                  "retries": {"attempts": 2, "on": "5xx,reset,connect-failure"},
                  "timeout": "5s"}},
    ]
    return [json.dumps(d) for d in docs]


@dataclass(frozen=True)
class Result:
    """One line of the table."""

    proxies: int
    p50_ms: float
    p99_ms: float
    raw_p99_ms: float
    ratio: float
    max_ms: float
    raw_p50_ms: float
    changes: int
    protocol: str
    fleet_processes: int
    p99_target: str
    ratio_target: str


def _rounds(fleet: Fleet, change: Callable[[int], None], *, changes: int, warmup: int,
            timeout: float) -> list[float]:
    """Seconds from each change until the last proxy ACKed it (warm-up rounds dropped)."""
    samples = []
    for i in range(warmup + changes):
        fleet.arm()
        t0 = time.monotonic()
        change(i)
        times = fleet.collect(timeout)
        missing = sum(1 for t in times if t is None)
        if missing:
            raise RuntimeError(f"change {i}: {missing} of {len(times)} proxies did not "
                               f"converge within {timeout:.0f}s")
        if i >= warmup:
            samples.append(max(t for t in times if t is not None) - t0)
        time.sleep(0.05)
    return samples


def measure(proxies: int, *, delta: bool, changes: int, processes: int,
            timeout: float, log: Callable[[str], None]) -> Result:
    protocol = "delta" if delta else "sotw"
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        with control_plane(Path(tmp) / "data", Path(tmp) / "serve.log") as (xds, admin):
            channel = grpc.insecure_channel(f"127.0.0.1:{admin}")
            stub = admin_pb2_grpc.AdminStub(channel)
            stub.Apply(admin_pb2.ApplyRequest(documents=_documents("v1")), timeout=30)
            log(f"[{protocol} N={proxies}] control plane up; connecting the fleet")
            fleet = Fleet.start(f"127.0.0.1:{xds}", proxies=proxies, processes=processes,
                                delta=delta, timeout=timeout)
            try:
                def apply(i: int) -> None:
                    active = "v2" if i % 2 == 0 else "v1"
                    stub.Apply(admin_pb2.ApplyRequest(documents=_documents(active)),
                               timeout=30)

                ours = _rounds(fleet, apply, changes=changes, warmup=2, timeout=timeout)
                route_bytes = fleet.route_bytes()
            finally:
                fleet.close()
                channel.close()
        log(f"[{protocol} N={proxies}] ours p99 {percentile(ours, 99) * 1e3:.1f} ms; "
            "raw server next")
    if len(route_bytes) != 2:
        raise RuntimeError("the fleet did not capture two route responses")
    raw_server = RawServer(route_bytes[0])
    try:
        fleet = Fleet.start(f"127.0.0.1:{raw_server.port}", proxies=proxies,
                            processes=processes, delta=delta, timeout=timeout)
        try:
            raw = _rounds(fleet, lambda i: raw_server.push(route_bytes[(i + 1) % 2]),
                          changes=changes, warmup=2, timeout=timeout)
        finally:
            fleet.close()
    finally:
        raw_server.close()
    p99, raw_p99 = percentile(ours, 99) * 1e3, percentile(raw, 99) * 1e3
    ratio = p99 / raw_p99
    at_target = proxies >= TARGET_PROXIES
    return Result(
        proxies=proxies,
        p50_ms=round(percentile(ours, 50) * 1e3, 2),
        p99_ms=round(p99, 2),
        raw_p99_ms=round(raw_p99, 2),
        ratio=round(ratio, 2),
        max_ms=round(max(ours) * 1e3, 2),
        raw_p50_ms=round(percentile(raw, 50) * 1e3, 2),
        changes=changes,
        protocol=protocol,
        fleet_processes=min(processes, proxies),
        p99_target=(("PASS" if p99 <= TARGET_P99_MS else "FAIL") if at_target
                    else f"n/a (target is for {TARGET_PROXIES} proxies)"),
        ratio_target="PASS" if ratio <= TARGET_RATIO else "FAIL",
    )


def _table(results: Sequence[Result]) -> str:
    head = ("| proxies | protocol | p50_ms | p99_ms | max_ms | raw_p99_ms | ratio "
            "| p99 ≤ 100 ms @1000 | ratio ≤ 1.5 |")
    rows = [head, "|" + "---|" * 9]
    for r in results:
        rows.append(f"| {r.proxies} | {r.protocol} | {r.p50_ms} | {r.p99_ms} | {r.max_ms} "
                    f"| {r.raw_p99_ms} | {r.ratio} | {r.p99_target} | {r.ratio_target} |")
    return "\n".join(rows)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", type=int, nargs="+", default=[100],
                        help="fleet size(s); each is a separate run (default 100)")
    parser.add_argument("--delta", action="store_true", help="Delta ADS instead of SotW")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--changes", type=int, default=20,
                        help="measured route changes per run (at least 20)")
    parser.add_argument("--fleet-processes", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one change (or connecting the fleet) may take")
    args = parser.parse_args(argv)
    if args.changes < 20:
        parser.error("--changes: at least 20")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = []
    for n in args.proxies:
        result = measure(n, delta=args.delta, changes=args.changes,
                         processes=args.fleet_processes, timeout=args.timeout, log=log)
        results.append(result)
        if args.json:
            out: dict[str, Any] = asdict(result)
            print(json.dumps(out), flush=True)
    if not args.json:
        print(_table(results))
        print(f"\nmachine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
