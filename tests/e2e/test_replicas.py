"""Two control-plane replicas on one etcd: all serve xDS, one leads the rollouts, and
when the leader dies the other takes over within the lease TTL without skipping or
repeating a step."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.store import EmbeddedEtcd
from controlplane.store.kv import EtcdKV
from tests.e2e.test_backbone import FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.e2e.test_rollout import Load, rollout_yaml
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e


LEADER_TTL_S = 3
FAST_LEASE = ("--leader-ttl", f"{LEADER_TTL_S}s")


def leader_pid(etcd: EmbeddedEtcd) -> int | None:
    async def read() -> bytes | None:
        kv = EtcdKV([etcd.endpoint], tls=etcd.tls)
        try:
            got = await kv.get(b"/controlplane/leader")
            return None if got is None else got.value
        finally:
            await kv.close()
    value = asyncio.run(read())
    return None if value is None else int(value.decode().split("-")[-2])


def test_leader_killed_mid_rollout_the_other_replica_finishes_it(
    tmp_path: Path, etcd: EmbeddedEtcd, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy],
) -> None:
    # A short lease (serve --leader-ttl): the takeover is what is tested, not the wait.
    a = ServeProcess(tmp_path / "a", etcd=etcd, extra_args=FAST_LEASE).start()
    b = ServeProcess(tmp_path / "b", etcd=etcd, extra_args=FAST_LEASE).start()
    try:
        wait_for_sync(lambda: leader_pid(etcd) == a.proc.pid, timeout=10,  # type: ignore[union-attr]
                      message="the first replica leads")
        v1, v2 = upstream_factory("v1"), upstream_factory("v2")
        port = free_port()
        apply(a, edge_yaml(port=port, v1=v1.port, v2=v2.port))
        envoy_factory(b, "edge-1", "edge")  # served by the replica that will survive
        version_behind(port, FIRST_CONFIG_S)("v1")

        with Load(port) as load:
            apply(a, rollout_yaml(steps="[20, 40, 60, 80, 100]", interval="2s"))

            def at_step(cp: ServeProcess, step: int) -> bool:
                doc = json.loads(cli(["rollout", "status", "payments-v2", "-o", "json"],
                                     server=cp.admin).out)
                return bool(doc["step"] >= step and doc["applied"])

            wait_for_sync(lambda: at_step(b, 1), timeout=20, message="step 2 applied")
            a.kill()
            wait_for_sync(lambda: leader_pid(etcd) == b.proc.pid,  # type: ignore[union-attr]
                          timeout=LEADER_TTL_S + 5, message="the survivor leads")
            wait_for_sync(
                lambda: json.loads(cli(["rollout", "status", "payments-v2", "-o", "json"],
                                       server=b.admin).out)["phase"] == "Succeeded",
                timeout=60, message="the rollout finished under the new leader",
            )
        assert load.failures == []
        version_behind(port, 5)("v2")

        entries = json.loads(cli(["audit", "-o", "json"], server=b.admin).out)
        # Each step is entered once (applied=False), by whichever replica led then.
        steps = [e["after"]["step"] for e in entries
                 if e["action"] in ("rollout/Progressing", "rollout/Promoting")
                 and not e["after"]["applied"]]
        assert steps == [0, 1, 2, 3, 4], steps  # none skipped, none doubled
        actors = {e["actor"] for e in entries if e["action"].startswith("rollout/")}
        assert len(actors) == 2, actors  # both leaders wrote, one after the other
    finally:
        a.stop()
        b.stop()
