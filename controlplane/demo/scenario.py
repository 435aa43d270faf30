"""The demo's story, step by step, driven through the admin API like an operator would.

1. a canary payments v1 → v2 with analysis: the engine promotes it by itself;
2. v2's account rotated (`credential rotate`): the provider accepts the old and the new
   key, the proxies switch, then the old key is revoked, and no request fails;
3. a canary v2 → v3, where v3 answers 30% 500s: analysis rolls it back by itself.

Each step records an outcome; the demo exits 1 when one did not happen.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live

from controlplane.contract import FINAL_PHASES, Phase
from controlplane.demo.traffic import Stage, Traffic
from controlplane.demo.view import Board, live_view
from controlplane.demo.world import World
from controlplane.rollout.writer import engine_actor

ENGINE = engine_actor("")  # the prefix of every engine principal

ROLLOUT = """
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: payments-{to}}}
spec:
  upstream: payments
  from: {from_}
  to: {to}
  strategy: canary
  steps: {steps}
  stepInterval: {interval}
  analysis: {{minRequests: 20, successRate: 0.99, p99LatencyMs: 1000, authFailureRate: 0.01,
              failureLimit: 2, inconclusive: pause}}
  rollbackWindow: 10m
"""

WARM_UP = "0 warm-up on v1"
CANARY_V2 = "1 canary v1 → v2"
ROTATE = "2 rotate v2's key"
CANARY_V3 = "3 canary v2 → v3"
AFTER = "after: back on v2"


@dataclass(frozen=True)
class Timing:
    """How long the demo dwells; `--fast` is the CI cut."""

    hold_s: float
    steps: list[int]
    interval: str
    decide_s: float
    """The longest a rollout may take to reach a final phase."""


FAST = Timing(hold_s=2.0, steps=[20, 60, 100], interval="2s", decide_s=45.0)
NORMAL = Timing(hold_s=5.0, steps=[5, 25, 50, 100], interval="8s", decide_s=90.0)


@dataclass
class Scenario:
    world: World
    traffic: Traffic
    live: Live
    console: Console
    timing: Timing
    board: Board = field(default_factory=Board)
    outcomes: dict[str, tuple[bool, str]] = field(default_factory=dict)

    async def run(self) -> bool:
        self._stage(WARM_UP, "steady: every request on payments v1 (through both Envoys)")
        await self._hold(self.timing.hold_s)
        await self._canary_v2()
        await self._rotate()
        await self._canary_v3()
        return all(ok for ok, _ in self.outcomes.values())

    # ---- steps ------------------------------------------------------------------------

    async def _canary_v2(self) -> None:
        stage = self._stage(CANARY_V2, "Step 1/3 · canary payments v1 → v2; analysis "
                                       "judges v2 at every step and promotes it")
        status = await self._rollout("v1", "v2")
        active = (await self.world.admin.get("upstream", "payments"))["spec"]["active"]
        ok = status["phase"] == Phase.SUCCEEDED and active == "v2"
        self.outcomes[CANARY_V2] = (ok, (
            f"promoted by analysis, v2 active ({stage.total.failed} failed)" if ok
            else f"not promoted: {status['phase']} ({status.get('message') or ''})"))
        self.board.note = "v2 takes all traffic; v1 stays configured for the rollback window"
        await self._hold(self.timing.hold_s)

    async def _rotate(self) -> None:
        name = "payments-v2-key"
        stage = self._stage(ROTATE, f"Step 2/3 · rotate v2's account ({name}) under load")
        self.board.rollout = None
        provider = self.world.upstreams["v2"]
        old = next(iter(provider.keys))
        new = f"v2-{secrets.token_hex(8)}"
        provider.keys.add(new)
        self._event("payments v2 (the account's provider) now accepts the old and the new key")
        self.world.key_files["v2"].write_text(new + "\n")
        generation = await self.world.admin.rotate_credential(name)
        self._event(f"controlplane credential rotate {name} → generation {generation}; "
                    "Envoy gets the new value over SDS")

        def since(key: str) -> float:
            return time.monotonic() - provider.last_seen.get(key, float("-inf"))

        def describe() -> None:
            seen_old, seen_new = provider.seen_keys[old], provider.seen_keys[new]
            share = seen_new / (seen_old + seen_new) if seen_old + seen_new else 0.0
            self.board.credential = (
                f"Credential {name}: generation {generation} · provider accepts "
                f"{len(provider.keys)} key(s) · requests with the new key so far "
                f"{seen_new} ({100 * share:.0f}%) · rejected (401): {provider.rejected}")

        deadline = time.monotonic() + 20
        switched = False
        while time.monotonic() < deadline:
            describe()
            if since(new) < 0.5 and since(old) > 1.0:
                switched = True
                break
            await self._tick()
        if switched:
            provider.keys = {new}
            self._event("every proxy presents the new key; the provider revokes the old one")
        else:
            self._event("[red]the proxies did not switch to the new key in time[/]")
        until = time.monotonic() + self.timing.hold_s * 1.5
        while time.monotonic() < until:
            describe()
            await self._tick()
        failed = stage.total.failed
        ok = switched and failed == 0 and provider.seen_keys[new] > 0
        self.outcomes[ROTATE] = (ok, (
            f"rotated to generation {generation}, 0 failed requests" if ok
            else f"rotation: switched={switched}, {failed} failed requests"))

    async def _canary_v3(self) -> None:
        self._stage(CANARY_V3, "Step 3/3 · canary payments v2 → v3; v3 answers 30% 500s: "
                               "analysis should roll it back by itself")
        self.board.credential = None
        self.board.note = ""
        status = await self._rollout("v2", "v3")
        entries = await self.world.admin.audit()
        actors = {str(e["actor"]) for e in entries
                  if e["kind"] == "Rollout" and e["name"] == "payments-v3"
                  and str(e["action"]) in ("rollout/RollingBack", "rollout/RolledBack")}
        by_engine = bool(actors) and all(a.startswith(ENGINE) for a in actors)
        check = status.get("lastCheck") or {}
        ok = status["phase"] == Phase.ROLLED_BACK and by_engine
        self.outcomes[CANARY_V3] = (ok, (
            f"rolled back by analysis (v3 success {100 * check.get('successRate', 0):.0f}%)"
            if ok else f"not rolled back by the engine: {status['phase']} by {actors or '-'}"))
        self._stage(AFTER, "all traffic back on v2")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "v3" in self.traffic.window()[1]:
            await self._tick()
        await self._hold(self.timing.hold_s)

    # ---- helpers ----------------------------------------------------------------------

    async def _rollout(self, from_: str, to: str) -> dict[str, Any]:
        name = f"payments-{to}"
        await self.world.admin.apply(ROLLOUT.format(
            from_=from_, to=to, steps=self.timing.steps, interval=self.timing.interval))
        self._event(f"controlplane apply: Rollout/{name} ({from_} → {to}, steps "
                    f"{self.timing.steps}, every {self.timing.interval}, with analysis)")
        deadline = time.monotonic() + self.timing.decide_s
        seen: tuple[object, ...] = ()
        while True:
            status = await self.world.admin.rollout_status(name)
            self.board.rollout = status
            now = (status["phase"], status["step"], status["applied"])
            if now != seen:
                seen = now
                self._event(_transition(status))
            if status["phase"] in FINAL_PHASES:
                return status
            if time.monotonic() > deadline:
                self._event(f"[red]{name}: no decision within {self.timing.decide_s:g} s[/]")
                return status
            await self._tick()

    def _stage(self, label: str, title: str) -> Stage:
        self.board.title = title
        self._event(f"[bold]{title}[/]")
        return self.traffic.mark(label)

    def _event(self, message: str) -> None:
        elapsed = time.monotonic() - self.board.started
        self.console.print(f"[dim]{elapsed:6.1f}s[/] {message}")

    async def _tick(self, seconds: float = 0.25) -> None:
        self.live.update(live_view(self.board, self.traffic))
        await asyncio.sleep(seconds)

    async def _hold(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            await self._tick()


def _transition(status: dict[str, Any]) -> str:
    phase = status["phase"]
    where = (f" step {status['step'] + 1}/{len(status['steps'])}" if status["step"] >= 0
             else "")
    acked = status["proxies"]
    line = (f"rollout {status['name']}: {phase}{where}, {status['to']} at "
            f"{status['weight']:g}%, proxies ACKed {acked['acked']}/{acked['total']}"
            f"{'' if status['applied'] else ' (waiting for ACKs)'}")
    if status.get("reason"):
        line += f" · {status['reason']}"
    return line
