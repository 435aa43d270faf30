"""`controlplane demo [--fast] [--keep] [--audit-out FILE]`: start, run the story, stop.

Exit codes: 0 every expected outcome happened; 1 one did not (or the environment did
not come up); 130 interrupted (Ctrl-C / SIGTERM). Whatever happens, everything the demo
started is stopped: Envoys by PID, then the control plane, etcd and the upstreams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live

from controlplane.demo.scenario import FAST, NORMAL, Scenario
from controlplane.demo.traffic import Traffic
from controlplane.demo.view import Board, audit_table, live_view, summary_table
from controlplane.demo.world import World

INTERRUPTED = 130
WIDTH_WITHOUT_TERMINAL = 140
TRAFFIC_RATE = 200.0
"""Requests per second, in all: enough for analysis at a 5% canary step."""

_EPILOG = """Runs for about 70 s (--fast: about 30 s) and exits 0 when every step had its
expected outcome: v2 promoted by analysis, v2's credential rotated with no failed
request, v3 rolled back by analysis. Ctrl-C stops everything at any time.

examples:
  controlplane demo
  controlplane demo --fast --audit-out /tmp/audit.jsonl
  controlplane demo --keep        # then talk to it: see what it prints at the end
"""


@dataclass(frozen=True)
class Options:
    fast: bool = False
    keep: bool = False
    audit_out: Path | None = None


class _Signals:
    """The first Ctrl-C / SIGTERM cancels the run (its cleanup then stops everything), or
    ends the --keep wait; a second one exits at once: Envoy and etcd die with us (their
    launcher set PR_SET_PDEATHSIG)."""

    def __init__(self) -> None:
        self.task = asyncio.current_task()
        self.interrupted = False
        self.keeping = asyncio.Event()
        self.stop = asyncio.Event()

    def __call__(self) -> None:
        if self.interrupted:
            os._exit(INTERRUPTED)
        self.interrupted = True
        if self.keeping.is_set():
            self.stop.set()
        elif self.task is not None:
            self.task.cancel()


async def main(options: Options, console: Console | None = None) -> int:
    """The whole demo with signal handling; returns the exit code."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # CI logs: wide enough for the tables
            console = Console(width=WIDTH_WITHOUT_TERMINAL)
    loop = asyncio.get_running_loop()
    signals = _Signals()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals)
    try:
        return await run_demo(options, console, signals)
    except asyncio.CancelledError:
        if not signals.interrupted:
            raise
        console.print("[yellow]interrupted: everything the demo started is stopped[/]")
        return INTERRUPTED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_demo(options: Options, console: Console, signals: _Signals | None = None
                   ) -> int:
    """Start everything, run the scenario, print the summary and the audit log."""
    timing = FAST if options.fast else NORMAL
    workdir = Path(tempfile.mkdtemp(prefix="controlplane-demo-"))
    try:
        console.print("[bold]controlplane demo[/]: starting embedded etcd, the control "
                      "plane, an edge and a sidecar Envoy, payments v1, v2 and v3 ...")
        console.print(f"workdir {workdir} (removed at the end)", soft_wrap=True)
        async with World.running(workdir) as world:
            etcd = world.cp.etcd.endpoint if world.cp.etcd else "-"
            console.print(
                f"etcd {etcd} · xDS 127.0.0.1:{world.cp.xds_port} · admin API "
                f"{world.admin_addr} · edge Envoy :{world.edge_port} · sidecar Envoy "
                f":{world.sidecar_port} · payments " + ", ".join(
                    f"{v} :{app.port}" for v, app in world.upstreams.items()))
            try:
                await world.wait_until_serving()
            except (TimeoutError, RuntimeError) as exc:
                console.print(f"[red]the proxies did not start serving: {exc or 'timeout'}; "
                              f"logs in {workdir}[/]")
                return 1
            traffic = Traffic({"edge": world.edge_port, "sidecar": world.sidecar_port},
                              rate=TRAFFIC_RATE)
            traffic.start()
            board = Board()
            try:
                with Live(live_view(board, traffic), console=console,
                          refresh_per_second=4) as live:
                    scenario = Scenario(world, traffic, live, console, timing, board)
                    ok = await scenario.run()
            finally:
                await traffic.stop()
            console.print()
            entries = await world.admin.audit()
            problems = await world.admin.verify_audit()
            console.print(summary_table(traffic.stages, scenario.outcomes))
            console.print(audit_table(entries, last=20, width=console.width))
            console.print(f"audit chain: {'intact' if not problems else problems} "
                          f"({len(entries)} entries; `controlplane audit --verify`)")
            if options.audit_out is not None:
                options.audit_out.write_text("".join(json.dumps(e) + "\n" for e in entries))
            ok = ok and not problems
            console.print("[bold green]every step had its expected outcome[/]" if ok else
                          "[bold red]an expected outcome did not happen (see above)[/]")
            if options.keep and signals is not None:
                _print_keep(console, world)
                signals.keeping.set()
                await signals.stop.wait()
                console.print("stopping everything ...")
            return 0 if ok else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _print_keep(console: Console, world: World) -> None:
    edge, sidecar = world.envoys
    console.print(f"""
[bold]--keep[/]: everything stays up until Ctrl-C. In another shell:

  export CONTROLPLANE_SERVER={world.admin_addr}
  controlplane get upstreams
  controlplane get proxies
  controlplane rollout status payments-v2      # also payments-v3
  controlplane audit
  curl -si http://127.0.0.1:{world.edge_port}/     # through the edge Envoy (answered by v2)
  curl -si http://127.0.0.1:{world.sidecar_port}/     # through the sidecar Envoy
  curl -s http://127.0.0.1:{edge.admin_port}/clusters   # edge Envoy admin; sidecar on \
:{sidecar.admin_port}

Bootstraps and Envoy logs: {world.workdir}
""")


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run everything locally (no Docker): canary, rotation, rollback",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--keep", action="store_true",
                   help="leave everything running at the end, until Ctrl-C")
    p.add_argument("--fast", action="store_true", help="short steps (CI): under a minute")
    p.add_argument("--audit-out", type=Path, metavar="FILE",
                   help="write the audit log at the end here, one JSON object a line")
    p.set_defaults(handler=lambda a: asyncio.run(main(
        Options(fast=a.fast, keep=a.keep, audit_out=a.audit_out))))
