"""Two replicas mid-rollout; the leader is cut off from etcd (SIGSTOP: its lease
keep-alive stops, as in a partition) for longer than the lease TTL, then comes back.

The other replica takes over within the TTL plus its campaign poll (≤ 15 s), drives the
rollout on, and the old leader, once it runs again with its stale view, writes nothing:
its late writes are fenced (lease expired, leader key not its own). No step is skipped
or doubled. The SIGKILL case is tests/e2e/test_replicas.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.store import EmbeddedEtcd
from tests.e2e.test_backbone import FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.e2e.test_replicas import leader_pid
from tests.e2e.test_rollout import Load, rollout_yaml, status
from tests.reliability.conftest import Figures
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

LEADER_TTL_S = 3  # serve --leader-ttl: the takeover is what is tested, not the wait
TAKEOVER_S = LEADER_TTL_S + 5.0  # lease TTL + campaign poll + load


def test_partitioned_leader_is_replaced_and_fenced(
    tmp_path: Path, etcd: EmbeddedEtcd, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy], figures: Figures,
) -> None:
    lease = ("--leader-ttl", f"{LEADER_TTL_S}s")
    a = ServeProcess(tmp_path / "a", etcd=etcd, extra_args=lease).start()
    b = ServeProcess(tmp_path / "b", etcd=etcd, extra_args=lease).start()
    assert a.proc is not None and b.proc is not None
    a_pid, b_pid = a.proc.pid, b.proc.pid
    frozen = False
    try:
        wait_for_sync(lambda: leader_pid(etcd) == a_pid, timeout=10,
                      message="the first replica leads")
        v1, v2 = upstream_factory("v1"), upstream_factory("v2")
        port = free_port()
        apply(a, edge_yaml(port=port, v1=v1.port, v2=v2.port))
        envoy_factory(b, "edge-1", "edge")  # served by the replica that stays up
        version_behind(port, FIRST_CONFIG_S)("v1")

        with Load(port) as load:
            apply(b, rollout_yaml(steps="[20, 40, 60, 80, 100]", interval="2s"))
            wait_for_sync(lambda: (doc := status(b))["phase"] == "Progressing"
                          and 1 <= int(doc["step"]) <= 2,  # type: ignore[call-overload]
                          timeout=30, interval=0.1, message="step 2 or 3 reached")
            os.kill(a_pid, signal.SIGSTOP)
            frozen, frozen_at, cut = True, time.time(), time.monotonic()
            wait_for_sync(lambda: leader_pid(etcd) == b_pid, timeout=TAKEOVER_S + 10,
                          interval=0.2, message="the other replica leads")
            takeover_s = time.monotonic() - cut
            step_at_takeover = int(status(b)["step"])  # type: ignore[call-overload]
            # The new leader moves the rollout on while the old one is still away...
            wait_for_sync(lambda: int(status(b)["step"]) > step_at_takeover,  # type: ignore[call-overload]
                          timeout=30, interval=0.2, message="the new leader steps")
            # ...then the old one runs again, with the view it had before the cut.
            os.kill(a_pid, signal.SIGCONT)
            frozen, thawed_at = False, time.time()
            wait_for_sync(lambda: status(b)["phase"] == "Succeeded", timeout=60,
                          interval=0.2, message="the rollout finished")
            # The old leader noticed it lost the lease (and is a follower now).
            wait_for_sync(lambda: "no longer the leader" in a.log() or
                          "lease expired" in a.log() or "no longer ours" in a.log(),
                          timeout=20, message="the old leader stepped down")
        version_behind(port, 5)("v2")
        assert leader_pid(etcd) == b_pid and a.proc.poll() is None
        assert load.failures == [], load.failures[:5]

        entries = json.loads(cli(["audit", "-o", "json"], server=b.admin).out)
        moves = [e for e in entries if e["action"].startswith("rollout/")]
        steps = [e["after"]["step"] for e in moves
                 if e["action"] in ("rollout/Progressing", "rollout/Promoting")
                 and not e["after"]["applied"]]
        assert steps == [0, 1, 2, 3, 4], steps  # none skipped, none doubled
        late = [e for e in entries if f"-{a_pid}-" in e["actor"] and e["time"] > frozen_at]
        assert late == [], late  # fenced: nothing from the old leader after the cut
        assert not [e for e in moves if "RollingBack" in e["action"]]
        assert {f"-{a_pid}-" in e["actor"] for e in moves} == {True, False}  # both led
        figures(takeover_s=takeover_s, frozen_s=thawed_at - frozen_at,
                sent=sum(load.versions.values()), failed=len(load.failures),
                late_writes_from_old_leader=len(late))
        assert takeover_s <= TAKEOVER_S, takeover_s
    finally:
        if frozen:
            os.kill(a_pid, signal.SIGCONT)
        a.stop()
        b.stop()
