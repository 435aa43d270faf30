"""A token record put into etcd behind the admin API's back, or one whose role was edited
there, mints nothing: records carry an HMAC under a key derived from the sealing key,
which etcd never holds (issue 15; before, `etcdctl put` of a SHA-256 and a role made a
working admin token, with no audit entry)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.store import EmbeddedEtcd, Store
from controlplane.store.tokens import TokenStore, digest
from tests.support.controlplane import ServeProcess, cli
from tests.support.etcd_access import serve_kv

pytestmark = [pytest.mark.reliability]

FORGED = "cpt_" + "f" * 43


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path / "cp").start()
    try:
        yield proc
    finally:
        proc.stop()


def behind_the_api(cp: ServeProcess, edit: dict[bytes, dict[str, object]]) -> None:
    """Put records into the serve's etcd directly, as a local attacker with etcdctl."""
    async def put() -> None:
        kv = serve_kv(cp.data_dir)
        try:
            for key, record in edit.items():
                await kv.put(key, json.dumps(record).encode())
        finally:
            await kv.close()
    asyncio.run(put())


def token(cp: ServeProcess, *args: str) -> str:
    made = cli(["token", "create", *args], server=cp.admin)
    assert made.code == 0, made.err
    return made.out.splitlines()[-1]


def test_a_token_put_into_etcd_or_edited_there_is_refused(cp: ServeProcess) -> None:
    root = token(cp, "--role", "admin", "--name", "root")
    viewer = token(cp, "--role", "viewer", "--name", "reader", "--token", root)
    key = f"/controlplane/tokens/{hashlib.sha256(viewer.encode()).hexdigest()}".encode()
    assert cli(["get", "upstreams", "--token", viewer], server=cp.admin).code == 0

    behind_the_api(cp, {
        f"/controlplane/tokens/{digest(FORGED)}".encode():
            {"name": "evil", "role": "admin", "created": 1.0},
    })
    forged = cli(["token", "create", "--role", "viewer", "--token", FORGED], server=cp.admin)
    assert forged.code == 1, forged.out
    assert "UNAUTHENTICATED" in forged.err or "token" in forged.err.lower(), forged.err

    # The viewer's own record, its role edited to admin (its MAC kept): refused too.
    listed = json.loads(cli(["token", "list", "-o", "json", "--token", root],
                            server=cp.admin).out)
    assert [t["name"] for t in listed] == ["reader", "root"]  # the forged one is not listed
    record = {"name": "reader", "role": "admin", "created": 0.0, "mac": "00" * 32}
    behind_the_api(cp, {key: record})
    escalated = cli(["token", "create", "--role", "admin", "--token", viewer],
                    server=cp.admin)
    assert escalated.code == 1, escalated.out
    assert cli(["get", "upstreams", "--token", root], server=cp.admin).code == 0
    assert "ignoring token record 'evil'" in cp.log()


async def test_records_from_before_signing_are_signed_once_and_audited(
        tmp_path: Path) -> None:
    etcd = await EmbeddedEtcd.start(tmp_path / "etcd")
    store = await Store.connect([etcd.endpoint], tls=etcd.tls)
    try:
        tokens = TokenStore(store)
        old, _ = await tokens.create(role="operator", name="old", actor="test")
        store.token_key = b"k" * 32
        assert await tokens.lookup(old) is None  # unsigned: not trusted once keys are on
        assert await tokens.sign_unsigned(actor="controlplane") == 1
        record = await tokens.lookup(old)
        assert record is not None and record.role == "operator"
        assert await tokens.sign_unsigned(actor="controlplane") == 0
        assert (await store.audit())[-1].action == "token/sign"
        new, _ = await tokens.create(role="viewer", name="new", actor="test")
        assert (await tokens.lookup(new)) is not None
        store.token_key = b"x" * 32  # another sealing key: nothing is trusted
        assert await tokens.lookup(new) is None
    finally:
        await store.close()
        await etcd.stop()
