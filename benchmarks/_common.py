"""What the benchmarks share: the control plane as a subprocess, the raw server, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

_SERVING = re.compile(r"serving xDS on [\d.]+:(\d+) and the admin API on [\d.]+:(\d+)")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@contextlib.contextmanager
def control_plane(data_dir: Path, log_path: Path,
                  timeout: float = 60.0) -> Iterator[tuple[int, int]]:
    """Run `controlplane serve` (embedded etcd) on free loopback ports; yields (xds, admin).

    The process is stopped with SIGTERM (SIGKILL after 15 s) when the block ends.
    """
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "serve", "--data-dir", str(data_dir),
             "--xds-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
             "--metrics-addr", "", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            match = _SERVING.search(log_path.read_text(errors="replace"))
            if match:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"control plane did not start; see {log_path}")
            time.sleep(0.05)
        yield int(match.group(1)), int(match.group(2))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: etcd goes too
                proc.wait()


# ---- the raw limit: a bare grpc.aio server writing prepared bytes to every stream ----------

_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"


async def _raw_serve(conn: multiprocessing.connection.Connection, first: bytes) -> None:
    queues: set[asyncio.Queue[bytes]] = set()

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        del context
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queue.put_nowait(first)
        queues.add(queue)

        async def drain() -> None:
            async for _ in requests:  # ACKs: read and dropped
                pass

        reader = asyncio.create_task(drain())
        try:
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)
            reader.cancel()

    handler = grpc.method_handlers_generic_handler(
        _ADS.strip("/").rsplit("/", 1)[0],
        {name: grpc.stream_stream_rpc_method_handler(stream)
         for name in ("StreamAggregatedResources", "DeltaAggregatedResources")},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(("port", port))
    try:
        while True:
            cmd, *args = await asyncio.to_thread(conn.recv)
            if cmd == "push":
                for queue in queues:
                    queue.put_nowait(args[0])
                conn.send(("pushed", len(queues)))
            else:
                break
    finally:
        await server.stop(0.5)
        conn.send(("closed",))


def _raw_main(conn: multiprocessing.connection.Connection, first: bytes) -> None:
    asyncio.run(_raw_serve(conn, first))


class RawServer:
    """A bare grpc.aio ADS server in its own process: sends `first` on connect, then `push`."""

    def __init__(self, first: bytes) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_raw_main, args=(child, first), daemon=True,
                                 name="raw-server")
        self._proc.start()
        if not self._conn.poll(30):
            self.close()
            raise RuntimeError("raw server did not start")
        self.port: int = self._conn.recv()[1]

    def push(self, data: bytes) -> None:
        """Queue `data` on every open stream (returns once queued, not once written)."""
        self._conn.send(("push", data))
        self._conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, ValueError):
            self._conn.send(("close",))
            if self._conn.poll(10):
                self._conn.recv()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
