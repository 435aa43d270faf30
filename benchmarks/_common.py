"""What the benchmarks share: the control plane as a subprocess, the raw server, statistics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from controlplane.api import admin_pb2, admin_pb2_grpc
from controlplane.server import GC_YOUNG_THRESHOLD
from controlplane.wiring import GRPC_OPTIONS

_SERVING = re.compile(r"serving xDS on [\d.]+:(\d+) and the admin API on [\d.]+:(\d+)")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def edge_documents(active: str = "v1", *, port: int = 10000) -> list[str]:
    """examples/edge.yaml's listener (on `port`), route and upstream, with `active` as the
    version."""
    meta = {"apiVersion": "controlplane/v1"}
    docs: list[dict[str, Any]] = [
        {**meta, "kind": "Listener", "metadata": {"name": "edge-http"},
         "spec": {"group": "edge", "port": port}},
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


def machine() -> str:
    """This machine in one line: CPU model, CPU count, kernel, Python."""
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


@contextlib.contextmanager
def admin_client(admin_port: int) -> Iterator[Callable[[Sequence[str]], None]]:
    """Admin.Apply of JSON/YAML documents over one loopback channel kept open for the
    block (no token: the admin API is in loopback bootstrap mode)."""
    with grpc.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
        stub = admin_pb2_grpc.AdminStub(channel)

        def apply(documents: Sequence[str]) -> None:
            stub.Apply(admin_pb2.ApplyRequest(documents=list(documents)), timeout=30)

        yield apply


def apply_documents(admin_port: int, documents: Sequence[str]) -> None:
    """One Admin.Apply on a channel of its own (see `admin_client`)."""
    with admin_client(admin_port) as apply:
        apply(documents)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """`rows` (equal keys) as a Markdown table, the keys as its head."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def fleet_parser(doc: str | None, *, default_proxies: int,
                 default_timeout: float = 60.0) -> argparse.ArgumentParser:
    """The options of every fleet benchmark: --proxies N..., --delta, --json,
    --fleet-processes, --timeout. `doc` is the module docstring (its first paragraph
    is the description)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", type=int, nargs="+", default=[default_proxies],
                        help=f"fleet size(s); each is a separate run (default "
                             f"{default_proxies})")
    parser.add_argument("--delta", action="store_true", help="Delta ADS instead of SotW")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--fleet-processes", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=default_timeout,
                        help="seconds one step (or connecting the fleet) may take")
    return parser


def report(rows: Iterable[dict[str, Any]], *, as_json: bool,
           table: Callable[[Sequence[dict[str, Any]]], str] = markdown_table) -> None:
    """With `as_json` print each row as one JSON line as soon as it is measured;
    else print one table of them all, then the machine."""
    done = []
    for row in rows:
        done.append(row)
        if as_json:
            print(json.dumps(row), flush=True)
    if not as_json:
        print(table(done))
        print(f"\nmachine: {machine()}")


def proc_status_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory field of /proc/PID/status in KiB: VmRSS (resident now), VmHWM (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used (its threads included, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The PIDs of `pid`'s direct children (empty once it is gone)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def wait_gone(pids: Sequence[int], timeout: float) -> None:
    """Wait until none of `pids` exists (zombies count as gone); SIGKILL each left after."""
    def alive(pid: int) -> bool:
        try:
            return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class ServeProcess:
    """`controlplane serve` (embedded etcd) as a subprocess on loopback ports.

    Port 0 means a free port; pass the ports of an earlier run (and its data dir) to
    restart on the same ones. The log is appended to, so one file can hold several runs.
    `runner` is what `python` runs with `serve ...` after it (benchmarks/_gc_serve.py
    wraps the CLI to change and count the GC).
    Stop it with `stop()` (SIGTERM) or `kill()` (SIGKILL, a crash); both go by PID and
    wait for the embedded etcd child to be gone too.
    """

    def __init__(self, data_dir: Path, log_path: Path, *, xds_port: int = 0,
                 admin_port: int = 0, timeout: float = 60.0,
                 runner: Sequence[str] = ("-m", "controlplane")) -> None:
        offset = log_path.stat().st_size if log_path.exists() else 0
        self.started = time.monotonic()
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *runner, "serve", "--data-dir", str(data_dir),
                 "--xds-addr", f"127.0.0.1:{xds_port}",
                 "--admin-addr", f"127.0.0.1:{admin_port}",
                 "--metrics-addr", "", "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )
        self.pid = self.proc.pid
        try:
            deadline = time.monotonic() + timeout
            while True:
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    match = _SERVING.search(f.read().decode(errors="replace"))
                if match:
                    break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"control plane did not start; see {log_path}")
                time.sleep(0.02)
        except BaseException:
            self.kill()
            raise
        self.serving = time.monotonic()
        """time.monotonic() when its log said it serves."""
        self.xds_port, self.admin_port = int(match.group(1)), int(match.group(2))

    def rss_kb(self, field: str = "VmRSS") -> int:
        """This process's (not etcd's) resident memory in KiB; `VmHWM` for the peak."""
        return proc_status_kb(self.pid, field)

    def kill(self) -> None:
        """SIGKILL by PID (a crash); returns once it and its etcd are gone."""
        self._end(signal.SIGKILL, 0.0)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 15 s; returns once it and its etcd are gone."""
        self._end(signal.SIGTERM, 15.0)

    def _end(self, sig: signal.Signals, grace: float) -> None:
        if self.proc.poll() is not None:
            return
        children = child_pids(self.pid)  # etcd: dies with us (PDEATHSIG), checked below
        self.proc.send_signal(sig)
        try:
            self.proc.wait(grace or None)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        wait_gone(children, 10.0)


@contextlib.contextmanager
def control_plane(data_dir: Path, log_path: Path, timeout: float = 60.0, *,
                  runner: Sequence[str] = ("-m", "controlplane")) -> Iterator[ServeProcess]:
    """Run `controlplane serve` (embedded etcd) on free loopback ports.

    The process is stopped with SIGTERM (SIGKILL after 15 s) when the block ends.
    """
    serve = ServeProcess(data_dir, log_path, timeout=timeout, runner=runner)
    try:
        yield serve
    finally:
        serve.stop()


# ---- the raw limit: a bare grpc.aio server writing prepared bytes to every stream ----------
# It runs as `controlplane serve` does (serve_command's GC threshold, the xDS server's gRPC
# options): with CPython's default threshold (700) the baseline paid 13-30% more CPU per
# change in collections serve does not run, and every ratio to it flattered us.

_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"


async def _raw_serve(conn: multiprocessing.connection.Connection, first: bytes,
                     pushes: bool) -> None:
    queues: set[asyncio.Queue[bytes]] = set()

    async def idle(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        del context
        yield first
        async for _ in requests:  # ACKs: read and dropped
            pass

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
        {name: grpc.stream_stream_rpc_method_handler(stream if pushes else idle)
         for name in ("StreamAggregatedResources", "DeltaAggregatedResources")},
    )
    server = grpc.aio.server(options=GRPC_OPTIONS)
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
            elif cmd == "gc":
                conn.send(("gc", gc.get_threshold()))
            else:
                break
    finally:
        await server.stop(0.5)
        conn.send(("closed",))


def _raw_main(conn: multiprocessing.connection.Connection, first: bytes,
              pushes: bool) -> None:
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])  # as serve_command
    asyncio.run(_raw_serve(conn, first, pushes))


class RawServer:
    """A bare grpc.aio ADS server in its own process: sends `first` on connect, then `push`.

    Same GC threshold and gRPC server options as `controlplane serve`, so a ratio to it is
    what our code costs, not a difference in settings. Each stream holds a queue and a
    task reading its ACKs; with `pushes=False` it holds nothing but the handler's own
    coroutine, which sends `first` and then reads the ACKs (what grpc.aio alone costs
    per idle stream; `push` then does nothing).
    """

    def __init__(self, first: bytes, *, pushes: bool = True) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_raw_main, args=(child, first, pushes), daemon=True,
                                 name="raw-server")
        self._proc.start()
        if not self._conn.poll(30):
            self.close()
            raise RuntimeError("raw server did not start")
        self.port: int = self._conn.recv()[1]
        if self._proc.pid is None:  # cannot happen once it answered; for the type
            raise RuntimeError("raw server has no PID")
        self.pid: int = self._proc.pid

    def rss_kb(self, field: str = "VmRSS") -> int:
        """This process's resident memory in KiB; `VmHWM` for the peak."""
        return proc_status_kb(self.pid, field)

    def gc_threshold(self) -> tuple[int, int, int]:
        """`gc.get_threshold()` as the server process has it (serve's, or no fair ratio)."""
        self._conn.send(("gc",))
        threshold: tuple[int, int, int] = self._conn.recv()[1]
        return threshold

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
