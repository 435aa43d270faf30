"""Who owns an Upstream's `active`, end to end: every interleaving of an apply of `active`
(or of the versions) with a Rollout's phases, a delete of the rollout and a rollback after
an apply. In each, `get upstream` (spec.active and status.traffic), the audit log and the
requests through a real Envoy must agree.

One `serve` + Envoy + upstreams v1/v2/v3 serve the whole table: each case starts from
`active: v1` with no rollout. The CLI runs in-process (the real parser, admin client and
exit codes) to keep the table fast.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.cli.main import run
from controlplane.main import _server_commands
from tests.e2e.test_backbone import edge_yaml
from tests.support.controlplane import CliResult, ServeProcess, cli
from tests.support.envoy import Envoy, start_envoy
from tests.support.http import get_sync
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

FIRST_CONFIG_S = 15.0
CONVERGE_S = 5.0
REACH_S = 15.0


def upstream_yaml(port: int, ports: dict[str, int], active: str = "v1",
                  versions: tuple[str, ...] = ("v1", "v2", "v3")) -> str:
    listed = "\n".join(f'    {v}: {{endpoints: ["127.0.0.1:{ports[v]}"]}}' for v in versions)
    return edge_yaml(port=port, active=active, versions=listed)


def rollout_yaml(name: str, *, steps: str, interval: str, source: str = "") -> str:
    return f"""
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: {name}}}
spec: {{upstream: payments, {source}to: v2, steps: {steps}, stepInterval: {interval}}}
"""


@dataclass
class World:
    cp: ServeProcess
    port: int
    ports: dict[str, int]
    files: Path
    _n: Iterator[int] = field(default_factory=count)

    def cli(self, *args: str) -> CliResult:
        """`controlplane ARGS` against this serve, in-process."""
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = run([*args, "--server", self.cp.admin], serve=_server_commands)
        return CliResult(code, out.getvalue(), err.getvalue())

    def apply(self, text: str) -> CliResult:
        path = self.files / f"apply-{next(self._n)}.yaml"
        path.write_text(text)
        return self.cli("apply", "-f", str(path))

    def base(self, active: str = "v1", versions: tuple[str, ...] = ("v1", "v2", "v3")) -> str:
        return upstream_yaml(self.port, self.ports, active, versions)

    def upstream(self) -> dict[str, Any]:
        result = self.cli("get", "upstream", "payments", "-o", "json")
        assert result.code == 0, result.err
        doc: dict[str, Any] = json.loads(result.out)
        return doc

    def status(self, name: str) -> dict[str, Any]:
        result = self.cli("rollout", "status", name, "-o", "json")
        assert result.code == 0, result.err
        doc: dict[str, Any] = json.loads(result.out)
        return doc

    def wait_status(self, name: str, **want: Any) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            doc = self.status(name)
            return doc if all(doc[k] == v for k, v in want.items()) else None
        return wait_for_sync(matches, timeout=REACH_S, interval=0.1,
                             message=f"Rollout/{name} {want}")

    def audit(self) -> list[dict[str, Any]]:
        result = self.cli("audit", "-o", "json")
        assert result.code == 0, result.err
        entries: list[dict[str, Any]] = json.loads(result.out)
        return entries

    def versions_seen(self, n: int = 30) -> set[str]:
        seen: Counter[str] = Counter()
        for _ in range(n):
            response = get_sync(self.port, "/anything", timeout=2.0)
            assert response.status == 200, response.status
            seen[response.json()["version"]] += 1
        return set(seen)

    def agree(self, active: str, weights: dict[str, float]) -> None:
        """`get upstream` shows `active` and `weights` in force, and requests through
        Envoy land exactly on the versions with a share (waiting for Envoy to converge)."""
        doc = self.upstream()
        assert doc["spec"]["active"] == active
        assert doc["status"]["traffic"] == [{"group": "edge", "weights": weights}]
        expected = {v for v, w in weights.items() if w > 0}
        wait_for_sync(lambda: self.versions_seen() == expected, timeout=CONVERGE_S,
                      interval=0.05, message=f"requests through Envoy land on {expected}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("ownership")
    upstreams = [Upstream(v).start_in_thread() for v in ("v1", "v2", "v3")]
    cp: ServeProcess | None = None
    envoy: Envoy | None = None
    try:
        cp = ServeProcess(root / "cp").start()
        files = root / "files"
        files.mkdir()
        w = World(cp, free_port(), {u.version: u.port for u in upstreams}, files)
        assert w.apply(w.base()).code == 0
        boot = cli(["bootstrap", "--node-id", "edge-1", "--group", "edge",
                    "--admin-port", str(free_port()), "--xds-addr", cp.xds])
        assert boot.code == 0, boot.err
        envoy = start_envoy(yaml.safe_load(boot.out), root / "envoy")
        wait_for_sync(lambda: w.versions_seen(1) == {"v1"}, timeout=FIRST_CONFIG_S,
                      message="Envoy serves v1")
        yield w
    finally:
        if envoy is not None:
            envoy.stop()
        if cp is not None:
            cp.stop()
        for up in upstreams:
            up.stop_thread()


@pytest.fixture
def fresh(world: World) -> World:
    """No rollout, `active: v1`, all traffic on v1."""
    listed = world.cli("get", "rollouts", "-o", "json")
    assert listed.code == 0, listed.err
    for item in json.loads(listed.out)["items"]:
        assert world.cli("delete", "rollout", item["metadata"]["name"]).code == 0
    result = world.apply(world.base())
    assert result.code == 0, result.err
    world.agree("v1", {"v1": 100})
    return world


# ---- reaching a phase -------------------------------------------------------------------

SPLIT = {"v1": 50, "v2": 50}


def progressing(w: World, name: str) -> tuple[str, dict[str, float]]:
    assert w.apply(rollout_yaml(name, steps="[50, 100]", interval="1h")).code == 0
    w.wait_status(name, phase="Progressing", step=0, applied=True)
    return "v1", SPLIT


def paused(w: World, name: str) -> tuple[str, dict[str, float]]:
    progressing(w, name)
    assert w.cli("rollout", "pause", name).code == 0
    w.wait_status(name, phase="Paused")
    return "v1", SPLIT


def succeeded(w: World, name: str) -> tuple[str, dict[str, float]]:
    assert w.apply(rollout_yaml(name, steps="[100]", interval="1s")).code == 0
    w.wait_status(name, phase="Succeeded", fromRetained=True, applied=True)
    return "v2", {"v1": 0, "v2": 100}  # `from` retained at 0% in the rollback window


def rolled_back(w: World, name: str) -> tuple[str, dict[str, float]]:
    progressing(w, name)
    assert w.cli("rollout", "rollback", name).code == 0
    w.wait_status(name, phase="RolledBack")
    return "v1", {"v1": 100}


def aborted(w: World, name: str) -> tuple[str, dict[str, float]]:
    progressing(w, name)
    assert w.cli("rollout", "abort", name).code == 0
    w.wait_status(name, phase="Aborted")
    return "v1", {"v1": 100}


Reach = Callable[[World, str], tuple[str, dict[str, float]]]


# ---- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    reach: Reach
    action: str  # "active:V" | "without:V" | "delete" | "active:V+delete" | "active:V+rollback"
    code: int
    says: tuple[str, ...] = ()
    active: str | None = None  # after the action; None: as reached
    weights: dict[str, float] | None = None
    audited: tuple[tuple[str, str], ...] = ()  # (kind, action) of the entries it adds


REFUSED = ("is {phase} and owns the active version", "`controlplane rollout abort {name}`",
           "`controlplane rollout promote {name}`")
MOVED = (("Upstream", "apply/configured"),)
SUPERSEDED = (("Upstream", "apply/configured"), ("Rollout", "apply/superseded"))

_NAMES = count()
CASES = [
    pytest.param(Case(progressing, "active:v3", 2, REFUSED), id="apply-active-while-progressing"),
    pytest.param(Case(paused, "active:v3", 2, REFUSED), id="apply-active-while-paused"),
    pytest.param(Case(progressing, "without:v2", 2, ("spec.versions", "used by Rollout/{name}")),
                 id="remove-to-while-progressing"),
    pytest.param(Case(succeeded, "active:v3", 0, (), "v3", {"v3": 100}, SUPERSEDED),
                 id="apply-active-after-success-in-window"),
    pytest.param(Case(succeeded, "active:v1", 0, (), "v1", {"v1": 100}, SUPERSEDED),
                 id="apply-from-back-after-success-in-window"),
    pytest.param(Case(rolled_back, "active:v3", 0, (), "v3", {"v3": 100}, MOVED),
                 id="apply-active-after-rollback"),
    pytest.param(Case(aborted, "active:v3", 0, (), "v3", {"v3": 100}, MOVED),
                 id="apply-active-after-abort"),
    pytest.param(Case(succeeded, "delete", 0, (), "v2", {"v2": 100},
                      (("Rollout", "delete"),)), id="delete-after-success"),
    pytest.param(Case(aborted, "delete", 0, (), "v1", {"v1": 100}, (("Rollout", "delete"),)),
                 id="delete-after-abort"),
    pytest.param(Case(progressing, "delete", 0, (), "v1", {"v1": 100},
                      (("Rollout", "delete"),)), id="delete-while-progressing"),
    pytest.param(Case(succeeded, "active:v3+delete", 0, (), "v3", {"v3": 100},
                      (*SUPERSEDED, ("Rollout", "delete"))), id="apply-then-delete-after-success"),
    pytest.param(Case(succeeded, "active:v3+rollback", 1,
                      ("cannot roll back", "active was changed by apply at", "by local:",
                       "apply `active: v1`"), "v3", {"v3": 100}, SUPERSEDED),
                 id="rollback-after-apply"),
]


@pytest.mark.parametrize("case", CASES)
def test_get_audit_and_envoy_agree(fresh: World, case: Case) -> None:
    w = fresh
    name = f"case-{next(_NAMES)}"
    active, weights = case.reach(w, name)
    w.agree(active, weights)
    phase = w.status(name)["phase"]
    before = len(w.audit())

    result: CliResult | None = None
    for step in case.action.split("+"):
        if step.startswith("active:"):
            result = w.apply(w.base(active=step.removeprefix("active:")))
        elif step.startswith("without:"):
            gone = step.removeprefix("without:")
            result = w.apply(w.base(versions=tuple(v for v in ("v1", "v2", "v3") if v != gone)))
        elif step == "delete":
            result = w.cli("delete", "rollout", name)
        elif step == "rollback":
            result = w.cli("rollout", "rollback", name)
        assert result is not None
        if step != case.action.split("+")[-1]:
            assert result.code == 0, result.err
    assert result is not None
    assert result.code == case.code, (result.out, result.err)
    for text in case.says:
        assert text.format(phase=phase, name=name) in result.err, result.err

    w.agree(case.active or active, case.weights or weights)
    added = w.audit()[before:]
    assert [(e["kind"], e["action"]) for e in added] == list(case.audited)
    assert all(e["actor"].startswith("local:") for e in added)  # the operator, not the engine
    if ("Rollout", "apply/superseded") in case.audited and "delete" not in case.action:
        doc = w.status(name)
        assert doc["fromRetained"] is False and doc["activeChangedBy"].startswith("local:")


def test_a_rollout_starts_from_active_and_the_engine_is_audited(fresh: World) -> None:
    w = fresh
    wrong = w.apply(rollout_yaml("wrong", steps="[100]", interval="1s", source="from: v3, "))
    assert wrong.code == 2
    assert ("Rollout/wrong: spec.from: 'v3' is not Upstream/payments's active version 'v1'"
            in wrong.err)
    assert w.cli("get", "rollout", "wrong").code == 1  # nothing written

    before = len(w.audit())
    succeeded(w, "implicit")
    doc = w.cli("get", "rollout", "implicit", "-o", "json")
    assert json.loads(doc.out)["spec"]["from"] == "v1"  # stored and shown explicitly
    again = w.apply(rollout_yaml("implicit", steps="[100]", interval="1s"))
    assert again.out.strip() == "rollout/implicit unchanged"
    engine = [(e["kind"], e["action"]) for e in w.audit()[before:]
              if e["actor"].startswith("engine:")]
    assert engine == [("Rollout", "rollout/Promoting"), ("Rollout", "rollout/Succeeded"),
                      ("Upstream", "rollout/set-active")]
    table = w.cli("get", "upstreams").out
    assert "TRAFFIC" in table and "v1=0%,v2=100%" in table
