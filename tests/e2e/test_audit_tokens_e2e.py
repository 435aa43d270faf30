"""The audit log and bearer tokens end to end, as a user runs them: the real
`controlplane serve` (embedded real etcd) and the real `controlplane` command."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from controlplane.store import AuditEntry, AuditRecord, Keys
from controlplane.store.kv import EtcdKV
from tests.e2e.test_backbone import edge_yaml
from tests.support.controlplane import CliResult, ServeProcess, cli
from tests.support.etcd_access import serve_kv
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

KEYS = Keys()


def etcd_of(serve: ServeProcess) -> EtcdKV:
    """A direct line to the serve process's embedded etcd, to do what no user may."""
    return serve_kv(serve.data_dir)


def in_etcd(serve: ServeProcess, work: Any) -> Any:
    async def run() -> Any:
        kv = etcd_of(serve)
        try:
            return await work(kv)
        finally:
            await kv.close()

    return asyncio.run(run())


def ok(args: list[str], serve: ServeProcess, *, token: str | None = None,
       stdin: str | None = None) -> CliResult:
    env = {"CONTROLPLANE_TOKEN": token} if token else None
    result = cli(args, server=serve.admin, stdin=stdin, env=env)
    assert result.code == 0, (args, result.err)
    return result


def audit_json(serve: ServeProcess, *extra: str, token: str | None = None) -> list[Any]:
    entries = json.loads(ok(["audit", "-o", "json", *extra], serve, token=token).out)
    assert isinstance(entries, list)
    return entries


def test_audit_lists_changes_and_verify_catches_an_edited_entry(serve: ServeProcess) -> None:
    ok(["apply", "-f", "-"], serve, stdin=edge_yaml(port=free_port(), v1=free_port(),
                                                    v2=free_port()))
    ok(["delete", "route", "payments"], serve)

    entries = audit_json(serve)
    assert [(e["seq"], e["action"], e["kind"], e["name"]) for e in entries] == [
        (1, "apply/created", "Listener", "edge-http"),
        (2, "apply/created", "Route", "payments"),
        (3, "apply/created", "Upstream", "payments"),
        (4, "delete", "Route", "payments"),
    ]
    assert all(e["actor"].startswith("local:ipv4:127.0.0.1:") for e in entries)

    lines = ok(["audit"], serve).out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "ACTOR", "ACTION", "KIND/NAME", "REASON"]
    seq, when, actor, action, target = lines[4].split()[:5]
    assert (seq, action, target) == ("4", "delete", "route/payments")
    assert actor == entries[3]["actor"]
    assert time.strptime(when, "%Y-%m-%dT%H:%M:%SZ")

    assert ok(["audit", "--verify"], serve).out.strip() == "audit log intact: 4 entries"

    async def tamper(kv: EtcdKV) -> None:
        got = await kv.get(KEYS.audit_entry(2))
        assert got is not None
        edited = json.loads(got.value) | {"actor": "someone-else"}
        await kv.put(KEYS.audit_entry(2), json.dumps(edited).encode())

    in_etcd(serve, tamper)
    result = cli(["audit", "--verify"], server=serve.admin)
    assert result.code == 1
    assert "entry 2 was modified" in result.out and "intact" not in result.out


def test_since_filters_by_age_and_bad_durations_are_usage_errors(serve: ServeProcess) -> None:
    async def backdate(kv: EtcdKV) -> None:
        # A properly chained first entry from two hours ago, as if the log were old.
        entry = AuditEntry.chain(AuditRecord(actor="test:old", action="delete", kind="Route",
                                             name="ancient"),
                                 seq=1, time=time.time() - 7200, prev_hash="")
        assert await kv.txn(expect={KEYS.audit_head: 0}, puts={
            KEYS.audit_entry(1): entry.to_json(),
            KEYS.audit_head: json.dumps({"seq": 1, "hash": entry.hash}).encode(),
        })

    in_etcd(serve, backdate)
    ok(["apply", "-f", "-"], serve, stdin=edge_yaml(port=free_port(), v1=free_port(),
                                                    v2=free_port()))
    assert [e["seq"] for e in audit_json(serve)] == [1, 2, 3, 4]
    assert [e["seq"] for e in audit_json(serve, "--since", "1h")] == [2, 3, 4]
    assert [e["seq"] for e in audit_json(serve, "--since", "3h")] == [1, 2, 3, 4]
    assert ok(["audit", "--verify"], serve).out.strip() == "audit log intact: 4 entries"

    result = cli(["audit", "--since", "yesterday"], server=serve.admin)
    assert result.code == 2 and "--since" in result.err and "yesterday" in result.err


def test_a_viewer_token_can_read_but_not_write(serve: ServeProcess) -> None:
    result = ok(["token", "create", "--role", "viewer", "--name", "dash"], serve)
    token = result.out.splitlines()[-1]
    assert len(token) >= 40 and " " not in token

    refused = cli(["get", "upstreams"], server=serve.admin)
    assert refused.code == 1
    assert "unauthenticated" in refused.err and "CONTROLPLANE_TOKEN" in refused.err
    assert cli(["get", "upstreams", "--token", "wrong"], server=serve.admin).code == 1

    before = ok(["get", "upstreams", "-o", "json"], serve, token=token).out
    denied = cli(["apply", "-f", "-", "--token", token], server=serve.admin,
                 stdin=edge_yaml(port=free_port(), v1=free_port(), v2=free_port()))
    assert denied.code == 1 and "permission denied" in denied.err, denied.err
    assert ok(["get", "upstreams", "-o", "json"], serve, token=token).out == before
    entries = audit_json(serve, token=token)
    assert [(e["action"], e["name"]) for e in entries] == [("token/create", "dash")]
    assert token not in json.dumps(entries)


def test_an_admin_token_applies_and_the_audit_names_it(serve: ServeProcess) -> None:
    root = ok(["token", "create", "--role", "admin", "--name", "root"], serve).out.splitlines()[-1]
    viewer = ok(["token", "create", "--role", "viewer"], serve, token=root).out.splitlines()[-1]
    assert cli(["token", "create", "--role", "admin", "--token", viewer],
               server=serve.admin).code == 1

    ok(["apply", "-f", "-"], serve, token=root,
       stdin=edge_yaml(port=free_port(), v1=free_port(), v2=free_port()))
    entries = audit_json(serve, token=viewer)
    creator, made_viewer, *applies = entries
    assert creator["actor"].startswith("local:") and made_viewer["actor"] == "token:root"
    assert [(e["actor"], e["action"]) for e in applies] == [("token:root", "apply/created")] * 3

    async def whole_keyspace(kv: EtcdKV) -> bytes:
        return b"".join(item.key + item.value for item in (await kv.range(b"/")).kvs)

    raw = in_etcd(serve, whole_keyspace)
    assert root.encode() not in raw and viewer.encode() not in raw


def test_tokens_are_listed_and_revoked_from_the_command_line(serve: ServeProcess) -> None:
    root = ok(["token", "create", "--role", "admin", "--name", "root"], serve).out.splitlines()[-1]
    dash = ok(["token", "create", "--role", "viewer", "--name", "dash"], serve,
              token=root).out.splitlines()[-1]
    listed = json.loads(ok(["token", "list", "-o", "json"], serve, token=root).out)
    assert [(t["name"], t["role"]) for t in listed] == [("dash", "viewer"), ("root", "admin")]
    table = ok(["token", "list"], serve, token=root).out
    assert table.splitlines()[0].split() == ["NAME", "ROLE", "CREATED"]
    assert root not in table and dash not in table  # names, never the tokens
    assert cli(["token", "list", "--token", dash], server=serve.admin).code == 1  # admin only

    ok(["get", "upstreams"], serve, token=dash)
    assert "token dash (viewer) revoked" in ok(["token", "revoke", "dash"], serve,
                                               token=root).out
    refused = cli(["get", "upstreams", "--token", dash], server=serve.admin)
    assert refused.code == 1 and "unauthenticated" in refused.err
    missing = cli(["token", "revoke", "dash", "--token", root], server=serve.admin)
    assert missing.code == 1 and "no token named 'dash'" in missing.err
    last = cli(["token", "revoke", "root", "--token", root], server=serve.admin)
    assert last.code == 1 and "last admin token" in last.err
    assert [e["action"] for e in audit_json(serve, token=root)][-1] == "token/revoke"
