"""Hostile MetricsService clients cannot steer rollouts: a real `serve` (real etcd), a real
Envoy pushing its stats and carrying real traffic, and forgers pushing crafted flushes.

Plaintext (one serve, one Envoy, three rollouts at once, one per case):
  alpha: forged 5xx for its `to`, from a node that is no connected proxy → it promotes;
  beta:  forged 2xx for its `to`, whose real traffic fails → it rolls back;
  delta: forged 5xx for its `to` from a connected proxy of another group → dropped.
mTLS: a certificate of another group or of another proxy of the same group claiming the
real proxy's node, and a revoked certificate of its group, do not count (the revoked one
is ended and refused).
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_backbone import FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.e2e.test_cert_revocation import issue
from tests.e2e.test_rollout import rollout_yaml
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy, start_envoy
from tests.support.http import get_sync
from tests.support.metrics_push import Forger, tls_credentials
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

ANALYSIS = ("  analysis: {minRequests: 10, successRate: 0.95, failureLimit: 2, "
            "inconclusive: pause}\n")
STEPS, INTERVAL = "[50, 100]", "2s"
DECIDE_S = 60.0  # two 2 s steps, each after an ACK, with 1 s stats flushes, on 2 busy cores
FORGED_5XX = (0, 500)
FORGED_2XX = (5000, 0)


def status(cp: ServeProcess, name: str) -> dict[str, object]:
    result = cli(["rollout", "status", name, "-o", "json"], server=cp.admin)
    assert result.code == 0, result.err
    doc: dict[str, object] = json.loads(result.out)
    return doc


def until_done(cp: ServeProcess, name: str) -> dict[str, object]:
    """The rollout's status once it succeeded or rolled back."""
    try:
        return wait_for_sync(
            lambda: (doc := status(cp, name))["phase"] in ("Succeeded", "RolledBack") and doc,
            timeout=DECIDE_S, interval=0.2, message=f"rollout {name} decided")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {status(cp, name)}\n{cp.log()}") from exc


def ignored(cp: ServeProcess, reason: str) -> float:
    """controlplane_metrics_ignored_total{reason} on the serve's /metrics."""
    url = f"http://127.0.0.1:{cp.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f'controlplane_metrics_ignored_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


class Load:
    """Requests to `path` through Envoy in a thread, paced, until stopped."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path, self.answers = port, path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                get_sync(self.port, self.path, timeout=2.0)
                self.answers += 1
            except OSError:
                pass

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def plaintext_state(port: int, internal_port: int, upstreams: dict[str, tuple[int, int]],
                    ledger: int) -> str:
    docs = [f"""
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-http}}
spec: {{group: edge, port: {port}, address: 127.0.0.1}}
---
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: internal-http}}
spec: {{group: internal, port: {internal_port}, address: 127.0.0.1}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: ledger}}
spec: {{listener: internal-http, prefix: /, upstream: ledger}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: ledger}}
spec: {{active: v1, versions: {{v1: {{endpoints: ["127.0.0.1:{ledger}"]}}}}}}
"""]
    for name, (v1, v2) in upstreams.items():
        docs.append(f"""
apiVersion: controlplane/v1
kind: Route
metadata: {{name: {name}}}
spec: {{listener: edge-http, prefix: /{name}/, upstream: {name}}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: {name}}}
spec:
  active: v1
  versions: {{v1: {{endpoints: ["127.0.0.1:{v1}"]}}, v2: {{endpoints: ["127.0.0.1:{v2}"]}}}}
  timeout: 5s
""")
    return "---".join(docs)


def rollout_of(name: str) -> str:
    return rollout_yaml(f"{name}-v2", steps=STEPS, interval=INTERVAL, extra=ANALYSIS).replace(
        "upstream: payments", f"upstream: {name}")


@dataclass
class Plaintext:
    cp: ServeProcess
    ghost_a: Forger
    ghost_b: Forger
    internal: Forger


@pytest.fixture(scope="module")
def plaintext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plaintext]:
    """One serve and one Envoy; three canaries started at once, each with its forger."""
    tmp = tmp_path_factory.mktemp("forgery")
    cp = ServeProcess(tmp / "cp").start()
    ups = {name: (Upstream("v1").start_in_thread(),
                  Upstream("v2", error_ratio=0.5 if name == "beta" else 0.0).start_in_thread())
           for name in ("alpha", "beta", "delta")}
    ledger = Upstream("v1").start_in_thread()
    envoys: list[Envoy] = []
    loads: list[Load] = []
    forgers: list[Forger] = []
    try:
        port = free_port()
        apply(cp, plaintext_state(port, free_port(), {n: (v1.port, v2.port)
                                                      for n, (v1, v2) in ups.items()},
                                  ledger.port))
        boot = cli(["bootstrap", "--node-id", "edge-1", "--group", "edge",
                    "--admin-port", str(free_port()), "--xds-addr", cp.xds])
        assert boot.code == 0, boot.err
        envoys.append(start_envoy(yaml.safe_load(boot.out), tmp / "envoy"))
        for name in ups:
            wait_for_sync(lambda n=name: get_sync(port, f"/{n}/x").json()["version"] == "v1",
                          timeout=FIRST_CONFIG_S, message=f"/{name}/ served by v1")
            loads.append(Load(port, f"/{name}/x").start())
        forged = Plaintext(
            cp,
            # Not connected over ADS: a node of `edge` only by its claim.
            ghost_a=Forger(cp.xds, node_id="ghost-a", cluster="edge",
                           per_flush={"alpha|v2": FORGED_5XX}),
            ghost_b=Forger(cp.xds, node_id="ghost-b", cluster="edge",
                           per_flush={"beta|v2": FORGED_2XX}),
            # A connected proxy (plaintext cannot tell it from a real one) of `internal`.
            internal=Forger(cp.xds, node_id="internal-1", cluster="internal", ads=True,
                            per_flush={"delta|v2": FORGED_5XX, "beta|v2": FORGED_2XX}),
        )
        forgers.extend((forged.ghost_a, forged.ghost_b, forged.internal))
        for forger in forgers:
            forger.start()
        assert forged.internal.connected.wait(FIRST_CONFIG_S), "internal-1 got no config"
        wait_for_sync(lambda: all(f.sent >= 3 for f in forgers), timeout=10,
                      message="the forgers pushing")
        for name in ups:
            apply(cp, rollout_of(name))
        yield forged
    finally:
        for forger in forgers:
            forger.stop()
        for load in loads:
            load.stop()
        for envoy in envoys:
            envoy.stop()
        cp.stop()
        for up in (*(u for pair in ups.values() for u in pair), ledger):
            up.stop_thread()


def test_forged_5xx_from_a_node_that_is_no_connected_proxy_do_not_roll_back(
    plaintext: Plaintext,
) -> None:
    doc = until_done(plaintext.cp, "alpha-v2")
    assert doc["phase"] == "Succeeded", doc
    check = doc["lastCheck"]
    assert isinstance(check, dict) and check["successRate"] == 1.0, check
    assert plaintext.ghost_a.ended is None and plaintext.ghost_a.sent > 10
    assert ignored(plaintext.cp, "not_connected") > 0


def test_forged_2xx_do_not_promote_a_canary_whose_real_traffic_fails(
    plaintext: Plaintext,
) -> None:
    doc = until_done(plaintext.cp, "beta-v2")
    assert doc["phase"] == "RolledBack", doc
    check = doc["lastCheck"]
    assert isinstance(check, dict) and check["verdict"] == "failed", check
    assert check["requests"] < 1000, check  # Envoy's real requests, none of the forged
    assert plaintext.ghost_b.sent > 10 and plaintext.internal.sent > 10


def test_pushes_naming_clusters_of_another_group_are_dropped(plaintext: Plaintext) -> None:
    doc = until_done(plaintext.cp, "delta-v2")
    assert doc["phase"] == "Succeeded", doc
    check = doc["lastCheck"]
    assert isinstance(check, dict) and check["successRate"] == 1.0, check
    assert plaintext.internal.ended is None
    assert ignored(plaintext.cp, "foreign_clusters") > 0


def test_mtls_only_the_proxys_own_certificate_counts(
    tmp_path: Path, upstream_factory: Callable[..., Upstream],
) -> None:
    cp = ServeProcess(tmp_path / "cp", extra_args=("--tls-dir", str(tmp_path / "tls"))).start()
    envoys: list[Envoy] = []
    forgers: list[Forger] = []
    load: Load | None = None
    try:
        v1, v2 = upstream_factory("v1"), upstream_factory("v2")
        port = free_port()
        apply(cp, edge_yaml(port=port, v1=v1.port, v2=v2.port))
        apply(cp, edge_yaml(port=free_port(), v1=v1.port, v2=v2.port, upstream="ledger",
                            route="ledger", listener="internal-http", group="internal"))
        certs = {who: tmp_path / who
                 for who in ("envoy", "internal", "sibling", "revoked", "stolen")}
        issue(cp, certs["envoy"], "--group", "edge")
        issue(cp, certs["sibling"], "--group", "edge")  # another proxy's of the same group
        issue(cp, certs["internal"], "--group", "internal")
        revoked_serial = issue(cp, certs["revoked"], "--group", "edge")
        stolen_serial = issue(cp, certs["stolen"], "--group", "edge")
        boot = cli(["bootstrap", "--node-id", "edge-1", "--group", "edge",
                    "--admin-port", str(free_port()), "--xds-addr", cp.xds,
                    "--tls-dir", str(certs["envoy"])])
        assert boot.code == 0, boot.err
        envoys.append(start_envoy(yaml.safe_load(boot.out), tmp_path / "envoy"))
        version_behind(port, FIRST_CONFIG_S)("v1")
        load = Load(port, "/x").start()

        # A certificate of edge, stolen: its stream is ended when it is revoked.
        stolen = Forger(cp.xds, node_id="edge-1", cluster="edge", per_flush={},
                        credentials=tls_credentials(certs["stolen"])).start()
        forgers.append(stolen)
        wait_for_sync(lambda: stolen.sent >= 3, timeout=10, message="the stolen cert pushing")
        assert stolen.ended is None
        for serial in (stolen_serial, revoked_serial):
            revoked = cli(["cert", "revoke", "--serial", serial], server=cp.admin)
            assert revoked.code == 0, revoked.err
        wait_for_sync(lambda: stolen.ended, timeout=10, message="the revoked stream ended")
        assert stolen.ended is not None and stolen.ended[0].name == "UNAUTHENTICATED"
        assert "revoked" in stolen.ended[1]

        # All claim the real Envoy's node; only their certificates say otherwise.
        other_group = Forger(cp.xds, node_id="edge-1", cluster="edge",
                             per_flush={"payments|v2": FORGED_5XX},
                             credentials=tls_credentials(certs["internal"])).start()
        sibling = Forger(cp.xds, node_id="edge-1", cluster="edge",
                         per_flush={"payments|v2": FORGED_5XX},
                         credentials=tls_credentials(certs["sibling"])).start()
        revoked_edge = Forger(cp.xds, node_id="edge-1", cluster="edge",
                              per_flush={"payments|v2": FORGED_5XX},
                              credentials=tls_credentials(certs["revoked"])).start()
        forgers.extend((other_group, sibling, revoked_edge))
        wait_for_sync(lambda: min(other_group.sent, sibling.sent) >= 3 and revoked_edge.ended,
                      timeout=10,
                      message="the forgers pushing or refused")
        assert revoked_edge.ended is not None
        assert revoked_edge.ended[0].name == "UNAUTHENTICATED", revoked_edge.ended

        apply(cp, rollout_yaml(steps=STEPS, interval=INTERVAL, extra=ANALYSIS))
        doc = until_done(cp, "payments-v2")
        assert doc["phase"] == "Succeeded", doc
        check = doc["lastCheck"]
        assert isinstance(check, dict) and check["successRate"] == 1.0, check
        assert other_group.ended is None and other_group.sent > 10
        assert sibling.ended is None and sibling.sent > 10
        assert ignored(cp, "not_connected") > 0  # seen, and ignored
    finally:
        for forger in forgers:
            forger.stop()
        if load is not None:
            load.stop()
        for envoy in envoys:
            envoy.stop()
        cp.stop()
