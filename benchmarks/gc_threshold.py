"""The cyclic GC in `controlplane serve`: CPython's default young threshold against serve's.

    .venv/bin/python -m benchmarks.gc_threshold --proxies 1000 [--delta] [--json]

Two `controlplane serve` processes, each with its own embedded etcd and its own fleet
of N simulated Envoys, both run through benchmarks/_gc_serve.py (so both pay for the
same counting hook): one with CPython's default young threshold (700), one with
serve's `GC_YOUNG_THRESHOLD`. Route changes as in convergence.py, in rounds that
alternate between the two. Per threshold: p99_ms and cpu_ms_per_change (medians over
rounds), and from `gc.callbacks` over the measured rounds: young (generation 0) and
full (generation 2) collections per change, GC milliseconds per change, and the
median and largest full collection.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ServeProcess,
    admin_client,
    control_plane,
    edge_documents,
    fleet_parser,
    percentile,
    report,
)
from benchmarks.fleet import Fleet
from benchmarks.rounds import Round, Side, interleaved, version_of, warm_up
from controlplane.server import GC_YOUNG_THRESHOLD
from tests.support.wait import wait_for_sync

DEFAULT_THRESHOLD = gc.get_threshold()[0]
"""CPython's own (700), read before anything changes it."""


def _gc_stats(serve: ServeProcess, path: Path, dumps: int) -> dict[str, Any]:
    """The wrapper's GC totals so far: asks with SIGUSR1, waits for dump number `dumps`."""
    os.kill(serve.pid, signal.SIGUSR1)

    def written() -> dict[str, Any]:
        if not path.exists():
            return {}
        stats: dict[str, Any] = json.loads(path.read_text())
        return stats if stats["dumps"] >= dumps else {}

    return wait_for_sync(written, timeout=30, message=f"GC stats dump {dumps}")


def _flipper(apply: Callable[[Sequence[str]], None]) -> Callable[[int], None]:
    """Change number i through `apply`: the upstream's active version flips."""
    def change(i: int) -> None:
        apply(edge_documents(version_of(i)))
    return change


def measure(proxies: int, *, delta: bool, changes: int, rounds: int, processes: int,
            timeout: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One row per threshold (the default first)."""
    protocol = "delta" if delta else "sotw"
    thresholds = (DEFAULT_THRESHOLD, GC_YOUNG_THRESHOLD)
    with (tempfile.TemporaryDirectory(prefix="cp-bench-gc-") as tmp,
          contextlib.ExitStack() as stack):
        sides: list[Side] = []
        serves: list[tuple[ServeProcess, Path]] = []
        for threshold in thresholds:
            work = Path(tmp) / str(threshold)
            work.mkdir()
            stats = work / "gc.json"
            serve = stack.enter_context(control_plane(
                work / "data", work / "serve.log",
                runner=("-m", "benchmarks._gc_serve", str(threshold), str(stats))))
            apply = stack.enter_context(admin_client(serve.admin_port))
            apply(edge_documents("v1"))
            log(f"[{protocol} N={proxies} gc {threshold}] connecting the fleet")
            fleet = Fleet.start(f"127.0.0.1:{serve.xds_port}", proxies=proxies,
                                processes=processes, delta=delta, timeout=timeout)
            stack.callback(fleet.close)
            side = Side(fleet, _flipper(apply), serve.pid)
            warm_up(side, timeout)
            sides.append(side)
            serves.append((serve, stats))
        before = [_gc_stats(serve, stats, 1) for serve, stats in serves]
        log(f"[{protocol} N={proxies}] {rounds} rounds of {changes} changes each side")
        pairs = interleaved(sides[0], sides[1], rounds=rounds, changes=changes,
                             timeout=timeout)
        after = [_gc_stats(serve, stats, 2) for serve, stats in serves]
    measured = changes * rounds
    return [_row([pair[k] for pair in pairs], before[k], after[k], proxies=proxies,
                 protocol=protocol, changes=measured) for k in range(len(thresholds))]


def _row(rounds: Sequence[Round], before: dict[str, Any],
         after: dict[str, Any], *, proxies: int, protocol: str, changes: int
         ) -> dict[str, Any]:
    def per_change(key: str, generation: int) -> float:
        return float(after[key][generation] - before[key][generation]) / changes

    full_ms = after["full_ms"][len(before["full_ms"]):]
    per_round = changes / len(rounds)
    return {
        "proxies": proxies,
        "protocol": protocol,
        "gc_threshold": after["threshold"],  # as the serve process had it
        "p99_ms": round(statistics.median(percentile(r.samples, 99) for r in rounds) * 1e3, 1),
        "cpu_ms_per_change": round(
            statistics.median(r.cpu_s / per_round for r in rounds) * 1e3, 1),
        "young_per_change": round(per_change("collections", 0), 2),
        "full_per_change": round(per_change("collections", 2), 3),
        "gc_ms_per_change": round(sum(per_change("seconds", g) for g in range(3)) * 1e3, 1),
        "full_ms_median": round(statistics.median(full_ms), 1) if full_ms else None,
        "full_ms_max": max(full_ms) if full_ms else None,
        "changes": changes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = fleet_parser(__doc__, default_proxies=1000)
    parser.add_argument("--changes", type=int, default=20,
                        help="measured route changes per round and side")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per side, alternating (default 3)")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report((row for n in args.proxies
            for row in measure(n, delta=args.delta, changes=args.changes, rounds=args.rounds,
                               processes=args.fleet_processes, timeout=args.timeout, log=log)),
           as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
