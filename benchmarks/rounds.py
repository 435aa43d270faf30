"""Timed route changes in rounds, two servers taking turns (convergence.py, gc_threshold.py).

A `Side` is one server under test with its own simulated fleet (benchmarks/fleet.py)
and a way to make change number i. `run_round` makes `changes` changes one after the
other, each awaited until the whole fleet has ACKed it, and counts the server's CPU
time over the round; `interleaved` alternates two sides round by round (ABBA), so
whatever else loads the machine falls on both alike.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks._common import cpu_seconds
from benchmarks.fleet import Fleet
from benchmarks.vs_sovereign import routed_cluster
from tests.support.envoy import Envoy
from tests.support.wait import wait_for_sync

WARMUP = 2
"""Changes on each side before any is measured."""
ROUND_SETTLE_S = 0.3
"""The pause that ends each round, counted to it: work a change leaves behind (the fleet
report after the ACK burst) is done, and paid by its side, before the other side's round."""


@dataclass
class Side:
    """One server under test with its own fleet (ours, the raw one, ours at another GC
    threshold)."""

    fleet: Fleet
    change: Callable[[int], None]
    """Makes change number i (versions alternate with i)."""
    pid: int
    """The server process whose CPU time is counted."""
    real: Sequence[Envoy] = ()
    done: int = 0
    """Changes made so far (warm-up included): the index of the next one."""


@dataclass(frozen=True)
class Round:
    """What one round of one side measured."""

    samples: list[float]
    """Seconds from each change until the last simulated proxy ACKed it."""
    real_samples: list[float]
    """Seconds from each change until each real Envoy routed to the new version."""
    cpu_s: float
    """The server's CPU seconds over the round, its settling after the last change included."""


def run_round(side: Side, *, changes: int, timeout: float,
              pool: concurrent.futures.Executor) -> Round:
    """`changes` changes on one side, each awaited until the whole fleet has ACKed it."""
    samples: list[float] = []
    real_samples: list[float] = []
    cpu0 = cpu_seconds(side.pid)
    for _ in range(changes):
        i = side.done
        side.done += 1
        side.fleet.arm()
        version = version_of(i)
        t0 = time.monotonic()
        applied = [pool.submit(routed_at, envoy, version, timeout) for envoy in side.real]
        side.change(i)
        times = side.fleet.collect(timeout)
        missing = sum(1 for t in times if t is None)
        if missing:
            raise RuntimeError(f"change {i}: {missing} of {len(times)} proxies did not "
                               f"converge within {timeout:.0f}s")
        samples.append(max(t for t in times if t is not None) - t0)
        real_samples += [f.result() - t0 for f in applied]
        time.sleep(0.05)
    time.sleep(ROUND_SETTLE_S)
    return Round(samples, real_samples, cpu_seconds(side.pid) - cpu0)


def version_of(i: int) -> str:
    """The upstream version change number i switches to (v2 first: serve starts at v1)."""
    return "v2" if i % 2 == 0 else "v1"


def routed_at(envoy: Envoy, version: str, timeout: float) -> float:
    """time.monotonic() once `envoy` routes to `version` (its admin polled every 5 ms)."""
    wait_for_sync(lambda: routed_cluster(envoy).endswith(version), timeout=timeout,
                  interval=0.005, message=f"a real Envoy routing to {version}")
    return time.monotonic()


def interleaved(first: Side, second: Side, *, rounds: int, changes: int, timeout: float
                ) -> list[tuple[Round, Round]]:
    """`rounds` pairs of rounds (first's, second's), the two sides alternating which goes
    first (ABBA), so load from elsewhere on the machine falls on both sides alike."""
    pairs = []
    workers = max(1, len(first.real), len(second.real))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for r in range(rounds):
            order = (first, second) if r % 2 == 0 else (second, first)
            done = {id(side): run_round(side, changes=changes, timeout=timeout, pool=pool)
                    for side in order}
            pairs.append((done[id(first)], done[id(second)]))
    return pairs


def warm_up(side: Side, timeout: float) -> None:
    """`WARMUP` changes on `side`, not measured (first pushes, caches, the raw server's
    bytes captured)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(side.real))) as pool:
        run_round(side, changes=WARMUP, timeout=timeout, pool=pool)
