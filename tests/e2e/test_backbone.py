"""The backbone end to end, as a user runs it: `controlplane serve` (embedded real etcd),
`apply`/`get`/`delete`, `bootstrap`, a real Envoy, requests through it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.http import get_sync
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

FIRST_CONFIG_S = 15.0  # Envoy start + first ADS exchange on a loaded 2-core machine
CONVERGE_S = 2.0


def edge_yaml(*, port: int, v1: int = 0, v2: int = 0, active: str = "v1",
              upstream: str = "payments", route: str = "payments", listener: str = "edge-http",
              group: str = "edge", extra: str = "", versions: str | None = None) -> str:
    """A listener, a route and an upstream; `versions` (YAML lines under `versions:`)
    instead of v1 and v2 on ports `v1` and `v2`."""
    if versions is None:
        versions = f"""    v1: {{endpoints: ["127.0.0.1:{v1}"]}}
    v2: {{endpoints: ["127.0.0.1:{v2}"]}}"""
    return f"""
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: {listener}}}
spec: {{group: {group}, port: {port}, address: 127.0.0.1}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: {route}}}
spec: {{listener: {listener}, prefix: /, upstream: {upstream}}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: {upstream}}}
spec:
  active: {active}
  versions:
{versions}
  timeout: 5s
{extra}"""


def apply(cp: ServeProcess, text: str) -> str:
    result = cli(["apply", "-f", "-"], server=cp.admin, stdin=text)
    assert result.code == 0, result.err
    return result.out


def version_behind(port: int, timeout: float) -> Callable[[str], None]:
    def check(version: str) -> None:
        def lands() -> bool:
            response = get_sync(port, "/anything", timeout=1.0)
            return response.status == 200 and response.json()["version"] == version
        wait_for_sync(lands, timeout=timeout, message=f"requests through :{port} reach {version}")
    return check


def test_walkthrough(serve: ServeProcess, upstream_factory: Callable[..., Upstream],
                     envoy_factory: Callable[..., Envoy]) -> None:
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    out = apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    assert "listener/edge-http created" in out and "upstream/payments created" in out

    table = cli(["get", "upstreams"], server=serve.admin)
    assert table.code == 0 and table.out.split()[:4] == ["NAME", "ACTIVE", "VERSIONS", "ENDPOINTS"]
    assert "payments" in table.out and "v1,v2" in table.out
    doc = json.loads(cli(["get", "upstream", "payments", "-o", "json"], server=serve.admin).out)
    assert doc["spec"]["active"] == "v1" and doc["kind"] == "Upstream"

    envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")

    # Re-applying the same file changes nothing; switching `active` moves traffic.
    assert "unchanged" in apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    out = apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port, active="v2"))
    assert "upstream/payments configured" in out
    version_behind(port, CONVERGE_S)("v2")

    proxies = json.loads(cli(["get", "proxies", "-o", "json"], server=serve.admin).out)["items"]
    (edge,) = [p for p in proxies if p["nodeId"] == "edge-1"]
    assert edge["group"] == "edge"
    for kind in ("CDS", "EDS", "LDS", "RDS"):
        assert edge["types"][kind]["ackedVersion"], (kind, edge)
        assert not edge["types"][kind]["lastNack"]


def test_invalid_input_is_rejected_and_changes_nothing(serve: ServeProcess) -> None:
    good = edge_yaml(port=free_port(), v1=free_port(), v2=free_port())
    apply(serve, good)
    before = cli(["get", "upstreams", "-o", "json"], server=serve.admin).out

    bad = good.replace("active: v1", "active: v9") + "\n---\nkind: Gadget\n"
    result = cli(["apply", "-f", "-"], server=serve.admin, stdin=bad)
    assert result.code == 2
    assert "spec.active" in result.err and "v9" in result.err and "Gadget" in result.err

    # A file valid on its own but not against the stored state: the server says why.
    dangling = """
apiVersion: controlplane/v1
kind: Route
metadata: {name: orphan}
spec: {listener: edge-http, upstream: ghost}
"""
    result = cli(["apply", "-f", "-"], server=serve.admin, stdin=dangling)
    assert result.code == 2 and "spec.upstream" in result.err and "ghost" in result.err
    result = cli(["delete", "upstream", "payments"], server=serve.admin)
    assert result.code == 2 and "payments" in result.err  # a route still uses it
    assert cli(["get", "upstreams", "-o", "json"], server=serve.admin).out == before
    assert cli(["get", "route", "orphan"], server=serve.admin).code == 1


def test_each_group_gets_only_its_own_config(
    serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy],
) -> None:
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    edge_port, internal_port = free_port(), free_port()
    apply(serve, edge_yaml(port=edge_port, v1=v1.port, v2=v2.port))
    apply(serve, edge_yaml(port=internal_port, v1=v1.port, v2=v2.port, active="v2",
                           upstream="ledger", route="ledger", listener="internal-http",
                           group="internal"))
    edge = envoy_factory(serve, "edge-1", "edge")
    internal = envoy_factory(serve, "internal-1", "internal")
    version_behind(edge_port, FIRST_CONFIG_S)("v1")
    version_behind(internal_port, FIRST_CONFIG_S)("v2")
    assert edge.dynamic_names("listeners") == ["edge-http"]
    assert internal.dynamic_names("listeners") == ["internal-http"]
    assert edge.dynamic_names("clusters") == ["payments|v1", "payments|v2"]
    assert internal.dynamic_names("clusters") == ["ledger|v1", "ledger|v2"]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_successive_renames_keep_every_listener_serving(
    delta: bool, serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy],
) -> None:
    """In the spirit of go-control-plane's end-to-end driver: rename clusters and routes,
    keep listener names, and every listener serves after every update."""
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    ports = {"a-http": free_port(), "b-http": free_port()}

    def state(generation: int) -> str:
        docs = []
        for listener, port in ports.items():
            name = f"{listener[0]}-gen{generation}"
            docs.append(edge_yaml(port=port, v1=v1.port, v2=v2.port, upstream=name, route=name,
                                  listener=listener, active="v1" if generation % 2 else "v2"))
        return "\n---\n".join(docs)

    envoy = envoy_factory(serve, "node-1", "edge", delta=delta)
    for generation in range(4):
        # Old routes and upstreams go in the same step, so nothing dangles.
        if generation:
            for listener in ports:
                old = f"{listener[0]}-gen{generation - 1}"
                assert cli(["delete", "route", old], server=serve.admin).code == 0
        apply(serve, state(generation))
        if generation:
            for listener in ports:
                old = f"{listener[0]}-gen{generation - 1}"
                assert cli(["delete", "upstream", old], server=serve.admin).code == 0
        expected = "v1" if generation % 2 else "v2"
        timeout = FIRST_CONFIG_S if generation == 0 else CONVERGE_S
        for port in ports.values():
            version_behind(port, timeout)(expected)
        want = sorted(f"{name[0]}-gen{generation}|{v}" for name in ports for v in ("v1", "v2"))
        wait_for_sync(lambda want=want: envoy.dynamic_names("clusters") == want,
                      timeout=CONVERGE_S, message=f"clusters are {want}")
        assert envoy.dynamic_names("listeners") == sorted(ports)


def test_control_plane_restart(
    serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy],
) -> None:
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    envoy = envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")
    before = _versions(envoy)

    serve.kill()  # SIGKILL: as in a crash
    for _ in range(20):
        assert get_sync(port, "/anything", timeout=1.0).json()["version"] == "v1"
    wait_for_sync(lambda: envoy.stats("control_plane.connected_state")
                  .get("control_plane.connected_state") == 0, timeout=10,
                  message="envoy noticed the control plane is gone")

    serve.start()  # same data dir, same ports
    wait_for_sync(lambda: envoy.stats("control_plane.connected_state")
                  .get("control_plane.connected_state") == 1, timeout=FIRST_CONFIG_S,
                  message="envoy reconnected")
    wait_for_sync(lambda: _acked(serve, "edge-1"), timeout=FIRST_CONFIG_S,
                  message="the proxy ACKed after the restart")
    assert _versions(envoy) == before
    assert get_sync(port, "/anything", timeout=1.0).json()["version"] == "v1"


def _versions(envoy: Envoy) -> dict[str, str]:
    dump = envoy.config_dump()
    out = {}
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        if "version_info" in config:
            out[kind] = config["version_info"]
        for key in ("dynamic_active_clusters", "dynamic_listeners", "dynamic_route_configs"):
            for item in config.get(key, []):
                state = item.get("active_state", item)
                name = (state.get("cluster") or state.get("listener")
                        or state.get("route_config") or {}).get("name")
                out[f"{key}/{name}"] = state.get("version_info", "")
    return out


def _acked(cp: ServeProcess, node: str) -> bool:
    result = cli(["get", "proxies", "-o", "json"], server=cp.admin)
    if result.code != 0:
        return False
    items = json.loads(result.out)["items"]
    return any(p["nodeId"] == node and p["types"].get("LDS", {}).get("ackedVersion")
               for p in items)


def test_outlier_detection_ejects_the_failing_endpoint(
    serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy],
) -> None:
    good, bad = upstream_factory("v1"), upstream_factory("v1", status=503)
    port = free_port()
    apply(serve, f"""
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-http}}
spec: {{group: edge, port: {port}, address: 127.0.0.1}}
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
  active: v1
  versions:
    v1: {{endpoints: ["127.0.0.1:{good.port}", "127.0.0.1:{bad.port}"]}}
  outlierDetection: {{consecutive5xx: 3, interval: 1s, baseEjectionTime: 60s,
                      maxEjectionPercent: 50}}
""")
    envoy = envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")

    def ejected() -> bool:
        for _ in range(10):
            get_sync(port, "/anything", timeout=1.0)
        lines = envoy.clusters_text().splitlines()
        return any(f"127.0.0.1:{bad.port}::health_flags::/failed_outlier_check" in line
                   for line in lines)

    wait_for_sync(ejected, timeout=10, message="the 503 endpoint is ejected")
    assert not any(f"127.0.0.1:{good.port}::health_flags::/failed_outlier_check" in line
                   for line in envoy.clusters_text().splitlines())
    served = [get_sync(port, "/anything", timeout=1.0).status for _ in range(20)]
    assert served == [200] * 20


def test_a_config_envoy_rejects_is_nacked_and_the_old_one_keeps_serving(
    serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy],
) -> None:
    """A listener on a port another process holds passes our validation (we cannot know),
    but Envoy cannot bind it and NACKs the LDS update."""
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        apply(serve, edge_yaml(port=taken, v1=v1.port, v2=v2.port, upstream="other",
                               route="other", listener="second-http"))

        def nack() -> str:
            items = json.loads(cli(["get", "proxies", "-o", "json"], server=serve.admin).out)
            return str(items["items"][0]["types"]["LDS"]["lastNack"])

        text = wait_for_sync(nack, timeout=5, message="the LDS NACK is recorded")
        assert str(taken) in text or "bind" in text.lower(), text
        for _ in range(10):
            assert get_sync(port, "/anything", timeout=1.0).json()["version"] == "v1"


def test_a_second_serve_on_a_taken_port_is_refused(serve: ServeProcess, tmp_path: Path) -> None:
    """gRPC would share the port (SO_REUSEPORT) and the kernel split the connections
    between the two servers; serve turns that off and says which flag is at fault."""
    second = subprocess.run(
        [sys.executable, "-m", "controlplane", "serve", "--data-dir", str(tmp_path / "two"),
         "--xds-addr", f"127.0.0.1:{free_port()}", "--admin-addr", serve.admin,
         "--metrics-addr", ""],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert second.returncode == 2, second.stderr
    assert "--admin-addr" in second.stderr and "in use" in second.stderr
    assert cli(["get", "upstreams"], server=serve.admin).code == 0  # the first is unharmed
