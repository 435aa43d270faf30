"""Reconnect storm: N proxies re-join a restarted control plane at once.

    .venv/bin/python -m benchmarks.reconnect --proxies 5000 [--delta] [--json]

For each N: start `controlplane serve` (embedded etcd) in a subprocess, apply the edge
listener, route and upstream, and connect N simulated Envoys (benchmarks/fleet.py) that
reconnect like Envoy: jittered back-off (0.1 s base, 0.5 s max), then every
subscription again with its last accepted `version_info` and an empty nonce (Delta:
`initial_resource_versions`). Then the control plane crashes (SIGKILL by PID; its etcd
dies with it) and starts again on the same xDS and admin ports and the same data dir.
all_served_s: from starting the new process until the last proxy has a response of
every type it subscribes to on its new stream (so it includes the restart itself:
serving_s, process start until it listens). peak_rss_kb is the new process's VmHWM;
cpu_s its CPU time until then (steadier than the wall clock on a shared machine).
Target (a goal, printed, not asserted): 5,000 proxies all served ≤ 10 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ServeProcess,
    apply_documents,
    cpu_seconds,
    edge_documents,
    fleet_parser,
    percentile,
    report,
)
from benchmarks.fleet import Fleet

TARGET_S = 10.0
TARGET_PROXIES = 5000


def _streams_of(admin_port: int, node_id: str) -> list[dict[str, Any]]:
    """What `controlplane get proxies` says of one node's streams (diagnostics)."""
    out = subprocess.run(
        [sys.executable, "-m", "controlplane", "get", "proxies", "-o", "json",
         "--server", f"127.0.0.1:{admin_port}"],
        capture_output=True, text=True, timeout=60).stdout
    try:
        items = json.loads(out)["items"]
    except (ValueError, KeyError):
        return [{"error": out[-300:]}]
    return [i for i in items if i.get("nodeId") == node_id]


def measure(proxies: int, *, delta: bool, processes: int, timeout: float,
            log: Callable[[str], None]) -> dict[str, Any]:
    """One row: restart under N connected proxies, time until all are served again."""
    protocol = "delta" if delta else "sotw"
    with tempfile.TemporaryDirectory(prefix="cp-bench-reconnect-") as tmp:
        data, log_path = Path(tmp) / "data", Path(tmp) / "serve.log"
        serve = ServeProcess(data, log_path)
        fleet = None
        try:
            apply_documents(serve.admin_port, edge_documents())
            log(f"[{protocol} N={proxies}] control plane up; connecting the fleet")
            fleet = Fleet.start(f"127.0.0.1:{serve.xds_port}", proxies=proxies,
                                processes=processes, delta=delta, timeout=timeout,
                                reconnect=True)
            rss_before = serve.rss_kb()
            fleet.arm()
            log(f"[{protocol} N={proxies}] all connected; restarting the control plane")
            serve.kill()
            serve = ServeProcess(data, log_path, xds_port=serve.xds_port,
                                 admin_port=serve.admin_port, timeout=timeout)
            times = fleet.collect_served(timeout)
            cpu = cpu_seconds(serve.pid)
            for stuck in fleet.stuck:
                log(f"[N={proxies}] not served: {stuck}")
                log(f"[N={proxies}] the control plane's streams of that node: "
                    f"{_streams_of(serve.admin_port, stuck.split()[0])}")
            peak = serve.rss_kb("VmHWM")
            rss_after = serve.rss_kb()
        finally:
            if fleet is not None:
                fleet.close()
            serve.stop()
    served = [t - serve.started for t in times if t is not None]
    missing = len(times) - len(served)
    all_served = max(served) if served and not missing else float("inf")
    at_target = proxies >= TARGET_PROXIES
    return {
        "proxies": proxies,
        "protocol": protocol,
        "serving_s": round(serve.serving - serve.started, 2),
        "p50_served_s": round(percentile(served, 50), 2) if served else None,
        "all_served_s": round(all_served, 2) if not missing else None,
        "not_served": missing,
        "cpu_s": round(cpu, 2),
        "rss_before_kb": rss_before,
        "peak_rss_kb": peak,
        "rss_after_kb": rss_after,
        "target": (("PASS" if all_served <= TARGET_S else "FAIL") if at_target
                   else f"n/a (target is for {TARGET_PROXIES} proxies)"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = fleet_parser(__doc__, default_proxies=TARGET_PROXIES, default_timeout=120.0)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report((measure(n, delta=args.delta, processes=args.fleet_processes,
                    timeout=args.timeout, log=log) for n in args.proxies),
           as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
