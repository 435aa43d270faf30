"""The demo's live view and its final tables (rich renderables, no I/O).

The live view shows the current step, the rollout as `controlplane rollout status` sees it
(phase, per-step weights, proxies ACKed, the last analysis check), the credential being
rotated, and the traffic of the last seconds per version: requests, share, success rate,
p99 latency and auth failures (401/403).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from controlplane.contract import Phase
from controlplane.demo.traffic import WINDOW_S, Stage, Tally, Traffic

PHASE_STYLE: dict[str, str] = {Phase.SUCCEEDED: "bold green", Phase.ROLLED_BACK: "bold red",
                               Phase.ROLLING_BACK: "red", Phase.PAUSED: "yellow",
                               Phase.ABORTED: "yellow"}


@dataclass
class Board:
    """What the live view shows besides traffic; the scenario updates it."""

    started: float = field(default_factory=time.monotonic)
    title: str = "starting"
    rollout: dict[str, Any] | None = None
    credential: str | None = None
    note: str = ""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def steps_bar(status: dict[str, Any]) -> Text:
    """`5 [25] 50 100`: every step's weight, the current one bracketed."""
    text = Text()
    for i, weight in enumerate(status["steps"]):
        if i:
            text.append(" ")
        if i == status["step"]:
            text.append(f"[{weight:g}]", style="bold cyan")
        else:
            text.append(f"{weight:g}", style="dim" if i > status["step"] else "")
    return text


def rollout_table(status: dict[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    phase = status["phase"]
    table.add_row(
        f"Rollout {status['name']}",
        Text(f"{phase}", style=PHASE_STYLE.get(phase, "bold")) + Text(
            f"  {status['upstream']} {status['from']} → {status['to']} ({status['strategy']})"),
    )
    table.add_row("Step weights", steps_bar(status))
    table.add_row("Desired split", f"{status['from']} {100 - status['weight']:g}%  ·  "
                                   f"{status['to']} {status['weight']:g}%")
    proxies = status["proxies"]
    applied = "applied" if status["applied"] else "waiting for ACKs"
    table.add_row("Proxies ACKed", f"{proxies['acked']}/{proxies['total']} ({applied})")
    check = status.get("lastCheck")
    if check:
        style = {"passed": "green", "failed": "red"}.get(check["verdict"], "yellow")
        table.add_row("Last analysis", Text(f"{check['verdict']}: {check['detail']}",
                                            style=style))
    if status.get("message"):
        table.add_row("Message", str(status["message"]))
    return table


def traffic_table(title: str, total: Tally, by_version: dict[str, Tally]) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("version", "requests", "share", "success", "p99 ms", "401/403", "5xx"):
        table.add_column(column, justify="left" if column == "version" else "right")

    def row(name: str, tally: Tally, style: str = "") -> None:
        share = tally.requests / total.requests if total.requests else None
        success = tally.success_rate
        success_style = "" if success is None or success >= 0.99 else "red"
        table.add_row(
            name, str(tally.requests), _pct(share),
            Text(_pct(success), style=success_style), _ms(tally.p99_ms),
            Text(str(tally.auth_failures), style="red" if tally.auth_failures else ""),
            Text(str(tally.server_errors), style="red" if tally.server_errors else ""),
            style=style,
        )

    for version in sorted(by_version):
        row(version, by_version[version])
    row("all", total, style="bold")
    return table


def live_view(board: Board, traffic: Traffic) -> RenderableType:
    elapsed = time.monotonic() - board.started
    parts: list[RenderableType] = [Text(f"{board.title}", style="bold magenta")]
    if board.rollout is not None:
        parts.append(rollout_table(board.rollout))
    if board.credential:
        parts.append(Text(board.credential))
    total, by_version = traffic.window()
    parts.append(traffic_table(
        f"Traffic, last {WINDOW_S:g} s (clients → edge + sidecar Envoy → payments)",
        total, by_version))
    parts.append(Text(f"since start: {traffic.total.requests} requests, "
                      f"{traffic.total.failed} not 2xx", style="dim"))
    if board.note:
        parts.append(Text(board.note, style="dim"))
    return Panel(Group(*parts), title="controlplane demo", subtitle=f"{elapsed:.0f} s",
                 border_style="blue")


def summary_table(stages: list[Stage], outcomes: dict[str, tuple[bool, str]]) -> Table:
    table = Table(title="Summary")
    for column in ("step", "seconds", "requests", "by version", "not 2xx", "401/403",
                   "p99 ms", "outcome"):
        table.add_column(column, justify="right" if column in (
            "seconds", "requests", "not 2xx", "401/403", "p99 ms") else "left")
    for stage in stages:
        if not stage.total.requests:
            continue
        seconds = (stage.ended or time.monotonic()) - stage.started
        split = ", ".join(f"{v} {t.requests}" for v, t in sorted(stage.by_version.items()))
        ok, detail = outcomes.get(stage.label, (True, ""))
        table.add_row(stage.label, f"{seconds:.1f}", str(stage.total.requests), split,
                      str(stage.total.failed), str(stage.total.auth_failures),
                      _ms(stage.total.p99_ms),
                      Text(detail, style="green" if ok else "bold red"))
    return table


def audit_table(entries: list[dict[str, Any]], *, last: int, width: int = 140) -> Table:
    """The last `last` entries; below 120 columns without the time (seq gives the order)."""
    shown = entries[-last:]
    wide = width >= 120
    table = Table(title=f"Audit log (last {len(shown)} of {len(entries)} entries; "
                        "local = the demo on the admin API's loopback)")
    columns = [("seq", 3), ("time", 8), ("actor", 14), ("action", 19), ("kind/name", 19)]
    for name, min_width in columns if wide else columns[:1] + columns[2:]:
        table.add_column(name, no_wrap=True, min_width=min_width)
    table.add_column("reason", no_wrap=True, overflow="ellipsis",
                     max_width=60 if wide else max(8, width - 76))
    for e in shown:
        when = datetime.fromtimestamp(float(e["time"]), UTC).strftime("%H:%M:%S")
        row = [str(e["seq"]), when, _actor(str(e["actor"])), str(e["action"]),
               f"{str(e['kind']).lower()}/{e['name']}", str(e.get("reason") or "")]
        table.add_row(*(row if wide else row[:1] + row[2:]))
    return table


def _actor(actor: str) -> str:
    """`engine:host-pid-id` → `engine`; `local:ipv4:…` → `local`."""
    return actor.split("@", 1)[0].split(":", 1)[0]
