"""`controlplane serve` stops on SIGTERM even when its embedded etcd was SIGKILLed.

Stopping cleans up in etcd (this replica's fleet and analysis reports, the leader's
resignation) and closes the connection to it. With etcd gone every one of these steps
must give up within a bounded time, and every task must end when cancelled: serve exits
within a few seconds, with the exit code of a normal SIGTERM (0), logging what it could
not clean up, and leaves no etcd behind.

The process test runs twice. `refused`: etcd's port is closed, every call fails at once;
there serve hung only when a cancellation landed in a race (below), in some runs.
`silent`: something took etcd's port and never answers, as an unreachable etcd host;
every call waits for its deadline, so unbounded clean-up steps (each up to the 5 s call
timeout, one after the other) always overran the deadline. The two store tests pin the
races down deterministically:

- dropping a connection ran aetcd's close in the caller's task, and that close swallows a
  CancelledError while it waits for its watch stream to end: the cancelled task went on
  retrying a dead etcd for ever, and stopping waited on it;
- closing a connection cancels the calls on it: another task's call in flight got a
  bare CancelledError instead of a failure (its task ended, or serve exited with 1).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from controlplane.errors import StoreUnavailableError
from controlplane.store import EmbeddedEtcd
from controlplane.store.kv import EtcdKV, WatchEvent
from tests.reliability.conftest import Figures
from tests.support.controlplane import ServeProcess
from tests.support.wait import wait_for, wait_for_sync

pytestmark = [pytest.mark.reliability]

STOP_DEADLINE_S = 8.0  # the clean-up in etcd is bounded to ~3 s (server.STOP_STEP_S)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _etcd_pids(data_dir: Path) -> list[int]:
    """Live etcd processes serving `data_dir/etcd`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"etcd") and str(data_dir / "etcd").encode() in args \
                and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _silent_listener(port: int) -> socket.socket:
    """A listener on `port` that never accepts: connections open and nothing answers."""
    return socket.create_server(("127.0.0.1", port))


@pytest.mark.parametrize("etcd_port", ["refused", "silent"])
def test_sigterm_stops_serve_within_a_deadline_after_its_etcd_was_killed(
    tmp_path: Path, figures: Figures, etcd_port: str,
) -> None:
    """etcd SIGKILLed, then SIGTERM to serve: it exits with 0 within the deadline."""
    cp = ServeProcess(tmp_path / "cp").start()
    assert cp.proc is not None
    etcd_pid: int | None = None
    listener: socket.socket | None = None
    try:
        found = re.search(r"embedded etcd https://127\.0\.0\.1:(\d+) \(pid (\d+)\)", cp.log())
        assert found, cp.log()
        port, etcd_pid = int(found.group(1)), int(found.group(2))
        os.kill(etcd_pid, signal.SIGKILL)
        if etcd_port == "silent":  # as soon as the dead etcd's socket is gone
            listener = wait_for_sync(lambda: _silent_listener(port), 5,
                                     message=f"listening on etcd's port {port}")
        # Serve has seen its store go: its state watch broke and now retries.
        wait_for_sync(lambda: "etcd watch broke" in cp.log(), 10,
                      message="serve noticed that etcd is gone")

        cp.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        wait_for_sync(lambda: cp.proc is not None and cp.proc.poll() is not None,
                      STOP_DEADLINE_S, interval=0.05,
                      message=f"serve exited on SIGTERM (pid {cp.proc.pid})")
        stop_s = time.monotonic() - start
        figures(stop_s=stop_s)
        assert cp.proc.returncode == 0, cp.log()
        assert "stopping" in cp.log()
        assert not _alive(etcd_pid)
        assert _etcd_pids(cp.data_dir) == []
    finally:
        cp.kill()  # by PID, if it still runs
        if etcd_pid is not None and _alive(etcd_pid):
            os.kill(etcd_pid, signal.SIGKILL)
        if listener is not None:
            listener.close()


async def _drain(events: AsyncGenerator[WatchEvent, None], seen: asyncio.Event) -> None:
    async for _ in events:
        seen.set()


async def test_a_task_cancelled_while_it_drops_a_connection_ends(etcd: EmbeddedEtcd) -> None:
    """A failed call drops its connection; shutdown's cancel may land just then."""
    kv = EtcdKV([etcd.endpoint], tls=etcd.tls)
    seen = asyncio.Event()
    watching = asyncio.create_task(_drain(kv.watch(b"/test/", 1), seen))
    try:
        await kv.put(b"/test/key", b"v")
        await wait_for(seen.is_set, 5, message="the watch stream is up")

        dropping = asyncio.create_task(kv.close())  # what a failed call does
        await asyncio.sleep(0)  # one turn of the loop: it is closing the connection now
        dropping.cancel()
        await asyncio.wait({dropping}, timeout=5)
        assert dropping.done(), "the cancelled task did not end"
        assert dropping.cancelled(), "the cancellation was swallowed: the task went on"
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await kv.close()


async def test_a_call_whose_connection_another_task_closes_fails_as_unavailable() -> None:
    """A call in flight when another task drops the connection is a failed call."""
    connected = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        connected.set()  # and never answer: the call stays in flight
        try:
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kv = EtcdKV([f"127.0.0.1:{port}"], timeout=1)
    try:
        call = asyncio.create_task(kv.get(b"/test/key"))
        await wait_for(connected.is_set, 5, message="the call is in flight")
        await kv.close()  # as another task's failed call does
        with pytest.raises(StoreUnavailableError):
            await asyncio.wait_for(call, 10)
    finally:
        await kv.close()
        for writer in writers:  # a connection still open would leak its socket
            writer.close()
        server.close()
        await server.wait_closed()
