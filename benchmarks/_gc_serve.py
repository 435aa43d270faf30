"""`controlplane serve` with another young-generation GC threshold, its collections counted.

    python -m benchmarks._gc_serve THRESHOLD STATS_JSON serve --data-dir ... (serve's flags)

Sets `controlplane.server.GC_YOUNG_THRESHOLD` (serve_command reads it when it starts),
then runs the CLI. A `gc.callbacks` hook counts each generation's collections and their
wall time; on SIGUSR1 the totals so far and the threshold in force are written to
STATS_JSON (atomically, with `dumps` counting the writes), so a driver can take them
before and after what it times.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import controlplane.server
from controlplane.main import main


class GcCounter:
    """Collections per generation, their total seconds, and each full collection's."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.full_ms: list[float] = []
        self.dumps = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        generation = int(info["generation"])
        self.collections[generation] += 1
        self.seconds[generation] += elapsed
        if generation == 2:
            self.full_ms.append(round(elapsed * 1e3, 2))

    def dump(self, path: Path) -> None:
        self.dumps += 1
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"dumps": self.dumps, "threshold": gc.get_threshold()[0],
                                   "collections": self.collections,
                                   "seconds": self.seconds, "full_ms": self.full_ms}))
        os.replace(tmp, path)  # the driver never reads half a file


def run(threshold: int, stats: Path, argv: list[str]) -> None:
    controlplane.server.GC_YOUNG_THRESHOLD = threshold
    counter = GcCounter()
    gc.callbacks.append(counter)
    signal.signal(signal.SIGUSR1, lambda *_: counter.dump(stats))
    sys.argv = [sys.argv[0], *argv]
    main()


if __name__ == "__main__":
    run(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
