"""SIGKILL the control plane in each phase of a canary, while a real Envoy carries
traffic: no request fails while it is down, the rollout is in the same phase at the
same weight after the restart, the config Envoy holds does not change, and the
rollout then finishes as it would have.

To hold a phase that normally lasts a few milliseconds (a step not yet ACKed, the
promotion, the rollback), a second proxy in the group, a raw ADS client, withholds
its ACK of the route configuration until the test lets it go. The mid-step case
(an applied step) is `tests/e2e/test_rollout.py::test_control_plane_killed_mid_step...`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from controlplane.translate.names import route_config_name
from controlplane.xds.resources import ROUTE
from tests.e2e.conftest import serve  # noqa: F401 (a fixture)
from tests.e2e.test_backbone import CONVERGE_S, FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.e2e.test_rollout import LEADER_TTL_S, Load, rollout_yaml, status, verb, wait_status
from tests.reliability.conftest import Figures
from tests.support.ads import AdsClient, node
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

RDS_NAME = route_config_name("edge-http")
RESUME_S = LEADER_TTL_S + FIRST_CONFIG_S
"""After a SIGKILL the dead replica's leader lease must lapse before the new one leads."""


class Holdout(threading.Thread):
    """A proxy of group `edge` (raw ADS) that ACKs the route configuration only while
    `allow` is set, and reconnects whenever its stream ends (a restarted server)."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.allow = threading.Event()
        self.allow.set()
        self.stop = threading.Event()
        self.streams = 0

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        while not self.stop.is_set():
            try:
                await self._stream()
            except Exception:
                pass
            await asyncio.sleep(0.2)

    async def _stream(self) -> None:
        async with AdsClient(self.target) as client:
            self.streams += 1
            await client.request(ROUTE, [RDS_NAME], node=node("holdout-1", "edge"))
            held, acked = None, None
            while not self.stop.is_set() and client.error is None:
                try:
                    held = await client.recv(0.1)
                except TimeoutError:
                    pass
                if held is not None and held is not acked and self.allow.is_set():
                    await client.ack(held, names=[RDS_NAME])
                    acked = held


@pytest.fixture
def holdout(serve: ServeProcess) -> Iterator[Holdout]:  # noqa: F811
    proxy = Holdout(serve.xds)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop.set()
        proxy.join(5)


def _steady(serve: ServeProcess, holdout: Holdout,  # noqa: F811
            envoy_factory: Callable[..., Envoy],
            upstream_factory: Callable[..., Upstream]) -> tuple[int, Envoy]:
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    envoy = envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")
    wait_for_sync(lambda: holdout.streams >= 1, timeout=FIRST_CONFIG_S, message="holdout on")
    return port, envoy


def _kill_and_restart(serve: ServeProcess, envoy: Envoy, holdout: Holdout,  # noqa: F811
                      phase: str, weight: float) -> float:
    """SIGKILL in `phase`, restart, and check nothing moved."""
    routes = envoy.config_dump("dynamic_route_configs")
    [held] = [c["version_info"] for c in routes["configs"]]  # one route configuration
    streams = holdout.streams
    serve.kill()
    started = time.monotonic()
    serve.start()
    after = wait_status(serve, FIRST_CONFIG_S, phase=phase, weight=weight)
    wait_for_sync(lambda: holdout.streams > streams, timeout=FIRST_CONFIG_S,
                  message="the holdout proxy reconnected")
    assert after["applied"] is False
    # Compared only once Envoy is back on the restarted server and has ACKed its routes:
    # before that, Envoy's config is the old server's, whatever the new one serves.
    acked = wait_for_sync(lambda: _acked_routes(serve, "edge-1"), timeout=FIRST_CONFIG_S,
                          message="Envoy ACKed the restarted server's routes")
    assert acked == held, f"the restarted server serves routes {acked}, Envoy held {held}"
    assert envoy.config_dump("dynamic_route_configs") == routes, "Envoy's config moved"
    return time.monotonic() - started


def _acked_routes(cp: ServeProcess, node_id: str) -> str:
    """The route configuration version `node_id` ACKed to `cp` ("" if none yet: a
    restarted server knows only the ACKs its own streams received)."""
    result = cli(["get", "proxies", "-o", "json"], server=cp.admin)
    assert result.code == 0, result.err
    return next((str(p["types"].get("RDS", {}).get("ackedVersion") or "")
                 for p in json.loads(result.out)["items"] if p["nodeId"] == node_id), "")


@pytest.mark.parametrize(("phase", "verb_name", "weight", "final", "final_weight"), [
    pytest.param("Progressing", None, 50.0, "Progressing", 50.0, id="before-step-1-applies"),
    pytest.param("Promoting", "promote", 100.0, "Succeeded", 100.0, id="during-promotion"),
    pytest.param("RollingBack", "rollback", 0.0, "RolledBack", 0.0, id="during-rollback"),
])
def test_sigkill_in_a_phase_loses_nothing(
    serve: ServeProcess, holdout: Holdout, envoy_factory: Callable[..., Envoy],  # noqa: F811
    upstream_factory: Callable[..., Upstream], figures: Figures, phase: str,
    verb_name: str | None, weight: float, final: str, final_weight: float,
) -> None:
    port, envoy = _steady(serve, holdout, envoy_factory, upstream_factory)
    with Load(port) as load:
        if verb_name is None:
            holdout.allow.clear()  # step 0 (50%) is pushed but never fully ACKed
            apply(serve, rollout_yaml(steps="[50, 100]", interval="1h"))
        else:
            apply(serve, rollout_yaml(steps="[50, 100]", interval="1h"))
            wait_status(serve, CONVERGE_S * 3, phase="Progressing", step=0, applied=True)
            holdout.allow.clear()
            verb(serve, verb_name, "payments-v2")
        wait_status(serve, CONVERGE_S * 3, phase=phase, weight=weight)
        wait_for_sync(lambda: status(serve)["proxies"] == {"acked": 1, "total": 2},
                      timeout=CONVERGE_S * 3, message="Envoy ACKed, the holdout did not")

        back_s = _kill_and_restart(serve, envoy, holdout, phase, weight)

        holdout.allow.set()
        wait_status(serve, RESUME_S, phase=final, weight=final_weight, applied=True)
    figures(sent=sum(load.versions.values()) + len(load.failures),
            failed=len(load.failures), back_in_phase_s=back_s)
    assert load.failures == [], load.failures[:5]
    assert sum(load.versions.values()) > 0
