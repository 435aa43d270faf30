"""`controlplane demo`: everything local, no Docker — embedded etcd, the control plane,
a real Envoy, upstreams v1 and v2, generated traffic, and a live view of where it goes.

It runs a canary v1 → v2 step by step (each step applied only once Envoy ACKed it),
then an operator's rollback inside the rollback window, and counts every request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from controlplane.model import parse_yaml
from controlplane.model.status import Phase
from controlplane.rollout.machine import Operator, transition
from controlplane.rollout.writer import apply_decision
from controlplane.server import ControlPlane, ServeConfig
from controlplane.store import Store
from controlplane.translate.bootstrap import bootstrap

console = Console(stderr=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _serve_version(version: str, port: int) -> asyncio.Server:
    body = f'{{"version": "{version}"}}'.encode()
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode() + body
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(response)  # one send: no Nagle + delayed-ACK stall
                await writer.drain()
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await handle(reader, writer)

    return await asyncio.start_server(guarded, "127.0.0.1", port)


@dataclass
class Traffic:
    """Requests through Envoy: which version answered, and how many failed."""

    port: int
    by_version: Counter[str] = field(default_factory=Counter)
    window: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    sent: int = 0
    last: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            version = await self._one()
            self.sent += 1
            if version is None:
                self.failed += 1
            else:
                self.last = version
                self.by_version[version] += 1
                self.window[version] += 1
            await asyncio.sleep(0.005)

    async def _one(self) -> str | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 2
            )
            writer.write(b"GET / HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 2)
            writer.close()
        except (OSError, TimeoutError):
            return None
        if not raw.startswith(b"HTTP/1.1 200"):
            return None
        return str(yaml.safe_load(raw.partition(b"\r\n\r\n")[2])["version"])


RESOURCES = """
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-http}}
spec: {{group: edge, port: {listener}, address: 127.0.0.1}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: payments}}
spec: {{listener: edge-http, upstream: payments}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: payments}}
spec:
  active: {active}
  versions:
    v1: {{endpoints: ["127.0.0.1:{v1}"]}}
    v2: {{endpoints: ["127.0.0.1:{v2}"]}}
  healthCheck: {{path: /healthz, interval: 1s}}
  outlierDetection: {{consecutive5xx: 5, interval: 5s, baseEjectionTime: 30s}}
  retries: {{attempts: 2, on: "5xx,reset,connect-failure"}}
  timeout: 2s
"""


def _view(traffic: Traffic, phase: str, active: str) -> Table:
    table = Table(title="controlplane demo: payments through a real Envoy")
    for column in ("phase", "desired split", "v1 (window)", "v2 (window)", "sent", "failed"):
        table.add_column(column)
    total = sum(traffic.window.values()) or 1
    table.add_row(
        phase, active,
        f"{traffic.window['v1']} ({100 * traffic.window['v1'] / total:.0f}%)",
        f"{traffic.window['v2']} ({100 * traffic.window['v2'] / total:.0f}%)",
        str(traffic.sent), str(traffic.failed),
    )
    return table


@contextlib.asynccontextmanager
async def _envoy(
    config: dict[str, object], workdir: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    path = workdir / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    binary = Path(sys.executable).with_name("envoy")
    envoy = str(binary) if binary.exists() else shutil.which("envoy") or "envoy"
    base_id = os.getpid() % 10_000 + 20_000
    proc = subprocess.Popen(  # noqa: ASYNC220 - once, at start-up
        [envoy, "-c", str(path), "--base-id", str(base_id), "--log-path",
         str(workdir / "envoy.log"), "--concurrency", "1", "--disable-hot-restart"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)


async def _until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def run_demo(*, keep: bool, hold: float) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="controlplane-demo-"))
    ports = {k: _free_port() for k in ("xds", "admin", "listener", "v1", "v2", "envoy_admin")}
    config = ServeConfig(
        data_dir=workdir / "data", xds_addr=f"127.0.0.1:{ports['xds']}",
        admin_addr=f"127.0.0.1:{ports['admin']}", metrics_addr=None,
    )
    servers = [await _serve_version(v, ports[v]) for v in ("v1", "v2")]
    stop_traffic = asyncio.Event()
    try:
        async with ControlPlane.running(config) as cp:
            assert cp.store is not None
            console.print(f"[bold]control plane[/] xDS :{cp.xds_port}, admin :{cp.admin_port}, "
                          f"embedded etcd {cp.etcd.endpoint if cp.etcd else '-'}")
            await cp.store.apply(parse_yaml(RESOURCES.format(active="v1", **ports)),
                                 actor="demo")
            boot = bootstrap(node_id="edge-1", group="edge", xds_host="127.0.0.1",
                             xds_port=cp.xds_port, admin_port=ports["envoy_admin"], edge=True)
            async with _envoy(boot, workdir):
                traffic = Traffic(ports["listener"])
                probe = Traffic(ports["listener"])
                if not await _until_async(probe, 20):
                    console.print("[red]Envoy did not start serving within 20 s[/]")
                    return 1
                runner = asyncio.create_task(traffic.run(stop_traffic))
                with Live(_view(traffic, "steady on v1", "v1 100%"), console=console,
                          refresh_per_second=8) as live:
                    ok = await _scenario(cp, traffic, live, hold=hold)
                stop_traffic.set()
                await runner
                console.print()
                summary = Table(title="summary")
                summary.add_column("requests")
                summary.add_column("v1")
                summary.add_column("v2")
                summary.add_column("failed")
                summary.add_row(str(traffic.sent), str(traffic.by_version["v1"]),
                                str(traffic.by_version["v2"]), str(traffic.failed))
                console.print(summary)
                for entry in await cp.store.audit():
                    console.print(f"audit #{entry.seq} {entry.actor} {entry.action} "
                                  f"{entry.kind}/{entry.name}")
                if keep:
                    console.print(f"[bold]--keep[/]: admin API on 127.0.0.1:{cp.admin_port}; "
                                  f"try CONTROLPLANE_SERVER=127.0.0.1:{cp.admin_port} "
                                  "controlplane get proxies. Ctrl-C stops everything.")
                    await _wait_for_signal()
                return 0 if ok and traffic.failed == 0 else 1
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)


ROLLOUT = """
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: payments-v2}}
spec:
  upstream: payments
  from: v1
  to: v2
  steps: [10, 25, 50, 100]
  stepInterval: {interval}
  rollbackWindow: 1h
"""


async def _scenario(cp: ControlPlane, traffic: Traffic, live: Live, *, hold: float) -> bool:
    """steady on v1 → canary to v2, step by step → an operator's rollback to v1."""
    assert cp.store is not None
    store = cp.store

    async def show(phase: str, seconds: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            live.update(_view(traffic, phase, await _split(store)))
            await asyncio.sleep(0.125)

    await show("steady on v1", hold)
    await store.apply(parse_yaml(ROLLOUT.format(interval=f"{max(hold / 2, 0.5):g}s")),
                      actor="demo")
    step = -2
    while True:
        state, _ = await store.load()
        status = state.status("payments-v2")
        if status.step != step:
            step = status.step
            traffic.window.clear()
        await show(f"canary: {status.phase}", 0.25)
        if not status.active:
            break
    if status.phase != Phase.SUCCEEDED:
        return False
    traffic.window.clear()
    await show("canary succeeded: v2 active", hold)
    state, revisions, _ = await store.read()
    decision = transition(state.rollouts["payments-v2"].spec, state.status("payments-v2"),
                          Operator(time.time(), "rollback", "demo"))
    await apply_decision(store, state, revisions, "payments-v2", decision, actor="demo")
    traffic.window.clear()
    while True:
        state, _ = await store.load()
        status = state.status("payments-v2")
        await show(f"rollback: {status.phase}", 0.25)
        if status.phase == Phase.ROLLED_BACK:
            break
    traffic.window.clear()
    await show("rolled back: v1 active", hold)
    return True


async def _split(store: Store) -> str:
    state, _ = await store.load()
    if "payments-v2" not in state.rollouts:
        return f"{state.upstreams['payments'].spec.active} 100%"
    status = state.status("payments-v2")
    if not status.active:
        return f"{state.upstreams['payments'].spec.active} 100%"
    return (f"v1 {100 - status.weight:g}% / v2 {status.weight:g}% "
            f"(ACKed {status.proxies_acked}/{status.proxies_total})")


async def _until_async(probe: Traffic, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe._one() is not None:
            return True
        await asyncio.sleep(0.1)
    return False


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run everything locally (no Docker) and show traffic moving",
        epilog="example: controlplane demo --fast",
    )
    p.add_argument("--keep", action="store_true", help="leave everything running at the end")
    p.add_argument("--fast", action="store_true", help="short phases (CI)")
    p.set_defaults(handler=lambda a: asyncio.run(run_demo(keep=a.keep,
                                                           hold=1.0 if a.fast else 4.0)))
