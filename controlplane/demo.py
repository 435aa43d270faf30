"""`controlplane demo`: everything local, no Docker — embedded etcd, the control plane,
a real Envoy, upstreams v1 and v2, generated traffic, and a live view of where it goes.

This first version shows the backbone: traffic through a real Envoy follows the
desired state in etcd, and a blue/green switch of `active` moves it without a failed
request. Managed canaries join it with the rollout engine.
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
from controlplane.server import ControlPlane, ServeConfig
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
    for column in ("phase", "active", "v1 (window)", "v2 (window)", "sent", "failed"):
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
                with Live(_view(traffic, "v1 active", "v1"), console=console,
                          refresh_per_second=8) as live:
                    for phase, active in (
                        ("steady on v1", "v1"), ("blue/green switch to v2", "v2"),
                        ("switch back to v1", "v1"),
                    ):
                        traffic.window.clear()
                        await cp.store.apply(
                            parse_yaml(RESOURCES.format(active=active, **ports)), actor="demo"
                        )
                        started = time.monotonic()
                        await _until(lambda a=active: traffic.last == a, 5)
                        traffic.window.clear()
                        while time.monotonic() - started < hold:
                            live.update(_view(traffic, phase, active))
                            await asyncio.sleep(0.125)
                        live.update(_view(traffic, phase, active))
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
                return 0 if traffic.failed == 0 else 1
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)


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
