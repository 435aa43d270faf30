"""etcd compacts its history past the revision a serve's watch has reached: the watch
re-lists the whole state and goes on, and the change it missed reaches Envoy.

The serve is frozen (SIGSTOP) so its watch falls behind; meanwhile etcd restarts (so
the frozen watch stream cannot simply be drained of buffered events later: measured,
thousands of events fit in the socket and HTTP/2 buffers), the state is rewritten many
times (no-op puts of the same values), the upstream's `active` version changes once,
and etcd is compacted to its latest revision. After SIGCONT the watch must resume from
a revision etcd no longer has.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.store import EmbeddedEtcd
from controlplane.store.keys import Keys
from controlplane.store.kv import EtcdKV
from tests.e2e.test_backbone import FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.reliability.conftest import Figures
from tests.support.controlplane import ServeProcess
from tests.support.envoy import Envoy
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

NOOP_WRITES = 500  # each re-puts every state key: ~1,500 events the frozen watch misses
BATCH = 50


async def _rewrite_and_compact(etcd: EmbeddedEtcd) -> tuple[int, int]:
    """No-op rewrites, one real change (active: v2), then compaction; returns
    (events written, the revision compacted to)."""
    keys = Keys()
    kv = EtcdKV([etcd.endpoint], tls=etcd.tls)
    try:
        start, end = keys.state_range
        current = {k.key: k.value for k in (await kv.range(start, end)).kvs}
        events = 0
        for _ in range(NOOP_WRITES // BATCH):
            await asyncio.gather(*(kv.txn(expect={}, puts=current) for _ in range(BATCH)))
            events += BATCH * len(current)
        upstream = keys.resource("Upstream", "payments")
        doc = json.loads(current[upstream])
        doc["spec"]["active"] = "v2"
        await kv.put(upstream, json.dumps(doc).encode())
        latest = (await kv.range(start, end)).revision
        await kv.compact(latest)
        return events + 1, latest
    finally:
        await kv.close()


def test_watch_relists_after_compaction_past_its_revision(
    tmp_path: Path, etcd: EmbeddedEtcd, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy], figures: Figures,
) -> None:
    cp = ServeProcess(tmp_path / "cp", etcd=etcd).start()
    assert cp.proc is not None
    frozen = False
    try:
        v1, v2 = upstream_factory("v1"), upstream_factory("v2")
        port = free_port()
        apply(cp, edge_yaml(port=port, v1=v1.port, v2=v2.port))
        envoy_factory(cp, "edge-1", "edge")
        version_behind(port, FIRST_CONFIG_S)("v1")
        log_mark = len(Path(cp.log_path or "").read_bytes())

        os.kill(cp.proc.pid, signal.SIGSTOP)
        frozen = True
        etcd.proc.kill()
        etcd.proc.wait(10)
        restarted = asyncio.run(EmbeddedEtcd.start(etcd.data_dir))
        etcd.proc = restarted.proc  # the fixture stops whichever runs now
        assert restarted.endpoint == etcd.endpoint
        events, compacted_to = asyncio.run(_rewrite_and_compact(restarted))
        os.kill(cp.proc.pid, signal.SIGCONT)
        frozen = False
        resumed = time.monotonic()
        version_behind(port, 30)("v2")
        converge_s = time.monotonic() - resumed

        def relisted() -> bool:
            tail = Path(cp.log_path or "").read_bytes()[log_mark:].decode(errors="replace")
            return "compacted" in tail and "re-reading the whole state" in tail
        wait_for_sync(relisted, timeout=10, message="the serve log shows the watch re-listed")
        assert cp.proc.poll() is None
        figures(events_missed=events, compacted_to=compacted_to, converge_s=converge_s)
    finally:
        if frozen:
            os.kill(cp.proc.pid, signal.SIGCONT)
        cp.stop()
