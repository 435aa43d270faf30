"""An attacker who can write etcd (not the data dir) against the audit log, and
`controlplane audit --verify` catching each attack: a tail re-hashed with plain
SHA-256 and the head moved, the last entry deleted and the head moved back, the whole
log wiped. The real `controlplane serve` (embedded etcd, or an external one to
restart against) and the real `controlplane` command.

The attacks write etcd's JSON by hand, the way anyone with `etcdctl` would, so that
they run the same against any version of the chain.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane.store import EmbeddedEtcd, Keys
from controlplane.store.kv import EtcdKV
from tests.e2e.test_backbone import edge_yaml
from tests.support.controlplane import CliResult, ServeProcess, cli
from tests.support.etcd_access import serve_kv
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

KEYS = Keys()


def attack(serve: ServeProcess, etcd: EmbeddedEtcd | None,
           work: Callable[[EtcdKV], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        kv = (serve_kv(serve.data_dir) if etcd is None
              else EtcdKV([etcd.endpoint], tls=etcd.tls))
        try:
            return await work(kv)
        finally:
            await kv.close()

    return asyncio.run(run())


def ok(args: list[str], serve: ServeProcess) -> CliResult:
    result = cli(args, server=serve.admin)
    assert result.code == 0, (args, result.err)
    return result


def four_entries(serve: ServeProcess) -> None:
    """Listener, route, upstream created, then the route deleted: entries 1..4."""
    result = cli(["apply", "-f", "-"], server=serve.admin,
                 stdin=edge_yaml(port=free_port(), v1=free_port(), v2=free_port()))
    assert result.code == 0, result.err
    ok(["delete", "route", "payments"], serve)
    assert ok(["audit", "--verify"], serve).out.strip() == "audit log intact: 4 entries"


def broken(serve: ServeProcess) -> str:
    result = cli(["audit", "--verify"], server=serve.admin)
    assert result.code == 1, (result.out, result.err)
    assert "intact" not in result.out and "audit log broken" in result.err
    return result.out


async def entries(kv: EtcdKV) -> list[dict[str, Any]]:
    return [json.loads(e.value) for e in (await kv.range(KEYS.audit)).kvs]


def sha256_link(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


@pytest.mark.parametrize("drop_fields", [
    pytest.param((), id="fields-kept"),
    pytest.param(("alg",), id="as-an-old-plain-entry"),
])
def test_a_tail_rehashed_with_plain_sha256_and_the_head_moved_is_detected(
    serve: ServeProcess, drop_fields: tuple[str, ...]
) -> None:
    four_entries(serve)

    async def rehash(kv: EtcdKV) -> None:
        log = await entries(kv)
        prev = log[0]["hash"]
        for doc in log[1:]:  # entry 2 edited, 2..4 re-hashed and relinked
            if doc["seq"] == 2:
                doc["actor"] = "someone-innocent"
            for name in drop_fields:
                doc.pop(name, None)
            doc["prev_hash"] = prev
            doc["hash"] = prev = sha256_link(doc)
            await kv.put(KEYS.audit_entry(doc["seq"]), json.dumps(doc).encode())
        await kv.put(KEYS.audit_head, json.dumps({"seq": 4, "hash": prev}).encode())

    attack(serve, None, rehash)
    out = broken(serve)
    expected = ("entry 2 was modified: HMAC mismatch" if not drop_fields
                else "entry 2 is chained with plain SHA-256 after keyed entries")
    assert expected in out, out


def test_the_last_entry_deleted_and_the_head_moved_back_is_detected(
    serve: ServeProcess
) -> None:
    four_entries(serve)

    async def truncate(kv: EtcdKV) -> None:
        third = (await entries(kv))[2]
        await kv.delete(KEYS.audit_entry(4))
        await kv.put(KEYS.audit_head, json.dumps({"seq": 3, "hash": third["hash"]}).encode())

    attack(serve, None, truncate)
    anchor = serve.data_dir / "audit.anchor"
    assert (f"entry 4 missing: the log ends at 3 but this replica saw 4 (anchored in "
            f"{anchor}): truncated") in broken(serve)
    assert stat.S_IMODE(anchor.stat().st_mode) == 0o600


def test_a_wiped_log_is_detected_and_still_after_new_writes(serve: ServeProcess) -> None:
    four_entries(serve)

    async def wipe(kv: EtcdKV) -> None:
        for entry in (await kv.range(KEYS.audit)).kvs:
            await kv.delete(entry.key)
        await kv.delete(KEYS.audit_head)

    attack(serve, None, wipe)
    anchor = serve.data_dir / "audit.anchor"
    assert f"the log is empty but 4 entries were anchored in {anchor}: wiped" in broken(serve)
    # The log grows again on a fresh chain: the anchor does not follow it.
    ok(["delete", "upstream", "payments"], serve)
    assert "entry 2 missing: the log ends at 1 but this replica saw 4" in broken(serve)
    assert json.loads(anchor.read_text())["seq"] == 4


def test_a_truncation_while_the_replica_was_down_is_detected_after_it_restarts(
    etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    serve = ServeProcess(tmp_path / "cp", etcd=etcd).start()
    try:
        four_entries(serve)
        serve.stop()

        async def truncate(kv: EtcdKV) -> None:
            second = (await entries(kv))[1]
            await kv.delete(KEYS.audit_entry(3))
            await kv.delete(KEYS.audit_entry(4))
            await kv.put(KEYS.audit_head,
                         json.dumps({"seq": 2, "hash": second["hash"]}).encode())

        attack(serve, etcd, truncate)
        serve.start()
        assert "entry 3 missing: the log ends at 2 but this replica saw 4" in broken(serve)
        assert "contradicts" in serve.log()  # said at start, before anyone asked
    finally:
        serve.stop()


def test_an_export_verifies_offline_with_the_key_and_its_anchor(
    serve: ServeProcess, tmp_path: Path
) -> None:
    four_entries(serve)
    copy = tmp_path / "audit.json"
    assert ok(["audit", "--export", str(copy)], serve).out.strip() == (
        f"exported 4 audit entries to {copy}")
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    key = str(serve.data_dir / "secrets.key")
    offline = cli(["audit", "--verify", "--file", str(copy), "--key-file", key])
    assert offline.code == 0 and offline.out.strip() == "audit log intact: 4 entries"

    doc = json.loads(copy.read_text())
    doc["entries"][1]["actor"] = "someone-innocent"
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    edited = cli(["audit", "--verify", "--file", str(tmp_path / "edited.json"),
                  "--key-file", key])
    assert edited.code == 1 and "entry 2 was modified: HMAC mismatch" in edited.out
    keyless = cli(["audit", "--verify", "--file", str(copy)])
    assert keyless.code == 1 and "needs the audit key" in keyless.out
    bad = cli(["audit", "--verify", "--file", str(copy), "--key-file", str(copy)])
    assert bad.code == 2 and "--key-file" in bad.err

    async def truncate(kv: EtcdKV) -> None:
        third = (await entries(kv))[2]
        await kv.delete(KEYS.audit_entry(4))
        await kv.put(KEYS.audit_head, json.dumps({"seq": 3, "hash": third["hash"]}).encode())

    attack(serve, None, truncate)
    ok(["audit", "--export", str(copy)], serve)
    report = cli(["audit", "--verify", "--file", str(copy), "--key-file", key, "-o", "json"])
    assert report.code == 1
    got = json.loads(report.out)
    assert got["intact"] is False and got["entries"] == 3
    assert any("the log ends at 3 but this replica saw 4" in p for p in got["problems"])

    anchor = serve.data_dir / "audit.anchor"  # as another replica's anchor would be given
    doc = json.loads(copy.read_text())
    doc["anchor"] = None
    copy.write_text(json.dumps(doc))
    against = cli(["audit", "--verify", "--file", str(copy), "--key-file", key,
                   "--anchor", str(anchor)])
    assert against.code == 1
    assert f"this replica saw 4 (anchored in {anchor}): truncated" in against.out
