"""`controlplane rollout status|pause|resume|promote|abort|rollback NAME`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from controlplane.api import admin_pb2
from controlplane.cli.client import Connection
from controlplane.cli.output import documents
from controlplane.contract import FINAL_PHASES, Phase

VERBS = ("pause", "resume", "promote", "abort", "rollback")


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    rollout = sub.add_parser("rollout", help="watch and steer rollouts")
    verbs = rollout.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser(
        "status", parents=[client], help="phase, step, weight and proxies ACKed",
        epilog="example: controlplane rollout status payments-v2 --watch",
    )
    p.add_argument("name")
    p.add_argument("--watch", action="store_true", help="live progress until it finishes")
    p.add_argument("-o", "--output", choices=["yaml", "json"])
    p.set_defaults(handler=_status)
    for verb in VERBS:
        p = verbs.add_parser(verb, parents=[client], help=f"{verb} a rollout (idempotent)",
                             epilog=f"example: controlplane rollout {verb} payments-v2")
        p.add_argument("name")
        if verb == "promote":
            p.add_argument("--full", action="store_true", help="straight to 100%%")
        p.set_defaults(handler=_verb)


def _conn(args: argparse.Namespace) -> Connection:
    return Connection.from_args(args.server, args.token, args.client_tls_dir)


def _fetch(conn: Connection, name: str) -> dict[str, Any]:
    response = conn.stub().GetRolloutStatus(
        admin_pb2.RolloutRequest(name=name), metadata=conn.metadata(), timeout=conn.timeout
    )
    status: dict[str, Any] = json.loads(response.status)
    return status


def _verb(args: argparse.Namespace) -> int:
    conn = _conn(args)
    verb = "promote-full" if getattr(args, "full", False) else args.verb
    response = conn.stub().RolloutAction(
        admin_pb2.RolloutActionRequest(name=args.name, verb=verb),
        metadata=conn.metadata(), timeout=conn.timeout,
    )
    status = json.loads(response.status)
    print(f"rollout/{args.name}: {response.result} (now {_phase(status)})")
    return 0


def _phase(s: dict[str, Any]) -> str:
    steps = s["steps"]
    where = f"step {s['step'] + 1}/{len(steps)}, " if s["step"] >= 0 else ""
    return f"{s['phase']} ({where}{s['weight']:g}% on {s['to']})"


def render(s: dict[str, Any], elapsed: float | None = None) -> Table:
    table = Table(show_header=False, box=None, title=(
        f"Rollout {s['name']}: {s['upstream']} {s['from']} → {s['to']} ({s['strategy']})"
    ))
    table.add_column(style="bold")
    table.add_column()
    marks = " ".join(
        f"[{w:g}]" if i == s["step"] else f"{w:g}" for i, w in enumerate(s["steps"])
    )
    table.add_row("Phase", _phase(s))
    table.add_row("Weights", f"{s['from']} {100 - s['weight']:g}%  {s['to']} {s['weight']:g}%")
    table.add_row("Steps", marks)
    proxies = s["proxies"]
    applied = "applied" if s["applied"] else "waiting for ACKs"
    table.add_row("Proxies", f"{proxies['acked']}/{proxies['total']} ACKed ({applied})")
    if s["reason"]:
        table.add_row("Reason", s["reason"])
    if s["message"]:
        table.add_row("Message", s["message"])
    check = s.get("lastCheck")
    if check:
        table.add_row("Last check", f"{check['verdict']}: {check['detail']}")
    if elapsed is not None:
        table.add_row("Elapsed", f"{elapsed:.0f}s")
    return table


def _status(args: argparse.Namespace) -> int:
    conn = _conn(args)
    status = _fetch(conn, args.name)
    if args.output:
        print(documents([status], args.output, single=True))
        return 0
    console = Console()
    if not args.watch:
        console.print(render(status))
        return 0
    if not sys.stdout.isatty():  # a pipe or a log: lines, not a live display's redraws
        return _stream(conn, args.name, status)
    started = time.monotonic()
    with Live(render(status, 0), console=console, refresh_per_second=4) as live:
        while status["phase"] not in FINAL_PHASES:
            time.sleep(0.5)
            status = _fetch(conn, args.name)
            live.update(render(status, time.monotonic() - started))
    return 0 if status["phase"] == Phase.SUCCEEDED else 1


def status_line(s: dict[str, Any]) -> str:
    """One line per state of a rollout, for `--watch` into a pipe or a file."""
    proxies = s["proxies"]
    applied = "applied" if s["applied"] else "waiting for ACKs"
    line = (f"rollout/{s['name']}: {_phase(s)}; {s['from']} {100 - s['weight']:g}% "
            f"{s['to']} {s['weight']:g}%; proxies {proxies['acked']}/{proxies['total']} "
            f"ACKed ({applied})")
    check = s.get("lastCheck")
    if check:
        line += f"; last check {check['verdict']}: {check['detail']}"
    for key in ("reason", "message"):
        if s[key]:
            line += f"; {key}: {s[key]}"
    return line


def _stream(conn: Connection, name: str, status: dict[str, Any]) -> int:
    """`--watch` without a terminal: a line (flushed) each time the status changes, until
    the rollout is finished; the exit code as with the live display."""
    last = ""
    while True:
        line = status_line(status)
        if line != last:
            print(line, flush=True)
            last = line
        if status["phase"] in FINAL_PHASES:
            return 0 if status["phase"] == Phase.SUCCEEDED else 1
        time.sleep(0.5)
        status = _fetch(conn, name)
