"""The audit chain and the store's pure helpers, without etcd."""

from __future__ import annotations

import dataclasses
import json

import pytest

from controlplane.errors import StoreUnavailableError
from controlplane.store.audit import (
    AuditEntry,
    AuditHead,
    AuditRecord,
    chain_entries,
    verify_chain,
)
from controlplane.store.keys import Keys
from controlplane.store.kv import _prefix_end, parse_endpoint


def records(n: int) -> list[AuditRecord]:
    return [AuditRecord(actor="alice", action="apply/created", kind="Upstream", name=f"u{i}",
                        after={"spec": {"n": i}}) for i in range(n)]


def test_entries_chain_and_verify() -> None:
    first, head = chain_entries(records(2), head=AuditHead(), time=1.5)
    more, head = chain_entries(records(1), head=head, time=2.5)
    entries = first + more
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == "" and entries[1].prev_hash == entries[0].hash
    assert head == AuditHead(3, entries[2].hash)
    assert verify_chain(entries, head) == []
    assert verify_chain([], AuditHead()) == []


def test_an_entry_survives_its_json_round_trip() -> None:
    (entry,), _ = chain_entries(records(1), head=AuditHead(), time=1722.125)
    back = AuditEntry.from_json(entry.to_json())
    assert back == entry and back.expected_hash() == entry.hash
    with pytest.raises(ValueError):
        AuditEntry.from_json(b'{"seq": 1}')
    assert AuditHead.from_json(AuditHead(4, "ab").to_json()) == AuditHead(4, "ab")


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        pytest.param(lambda es, h: ([es[0], dataclasses.replace(es[1], actor="mallory"), es[2]],
                                    h), "entry 2 was modified", id="edited"),
        pytest.param(lambda es, h: ([es[0], es[2]], h), "entry 2 missing", id="deleted"),
        pytest.param(lambda es, h: (es[:2], h), "the head says entry 3", id="tail-deleted"),
        pytest.param(lambda es, h: (es, AuditHead(3, "0" * 64)), "head's hash", id="head-hash"),
        pytest.param(lambda es, h: (es, AuditHead(2, es[1].hash)), "the head says entry 2",
                     id="head-behind"),
    ],
)
def test_verify_reports_tampering(tamper: object, problem: str) -> None:
    entries, head = chain_entries(records(3), head=AuditHead(), time=1.0)
    changed, changed_head = tamper(entries, head)  # type: ignore[operator]
    problems = verify_chain(changed, changed_head)
    assert any(problem in p for p in problems), problems


def test_a_rehashed_edit_breaks_the_next_link() -> None:
    entries, head = chain_entries(records(3), head=AuditHead(), time=1.0)
    body = {k: v for k, v in dataclasses.asdict(entries[1]).items() if k != "hash"}
    body["actor"] = "mallory"
    forged = AuditEntry.chain(
        AuditRecord(**{k: body[k] for k in ("actor", "action", "kind", "name", "reason",
                                            "before", "after")}),
        seq=2, time=body["time"], prev_hash=body["prev_hash"],
    )
    problems = verify_chain([entries[0], forged, entries[2]], head)
    assert any("entry 3 does not chain" in p for p in problems), problems


def test_secrets_never_reach_an_entry_unless_passed() -> None:
    (entry,), _ = chain_entries([AuditRecord("a", "apply/created", "Credential", "k",
                                             after={"spec": {"value": "[redacted]"}})],
                                head=AuditHead(), time=1.0)
    assert json.loads(entry.to_json())["after"] == {"spec": {"value": "[redacted]"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2379", ("127.0.0.1", 2379)),
        ("http://10.0.0.1:4001/", ("10.0.0.1", 4001)),
        ("etcd", ("etcd", 2379)),
        (":2380", ("127.0.0.1", 2380)),
    ],
)
def test_parse_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


def test_bad_endpoint_says_what_to_write() -> None:
    with pytest.raises(StoreUnavailableError, match="HOST:PORT"):
        parse_endpoint("host:port")


def test_key_layout() -> None:
    keys = Keys("/cp")
    assert keys.resource("Upstream", "payments") == b"/cp/resources/Upstream/payments"
    assert keys.parse_resource(b"/cp/resources/Upstream/payments") == ("Upstream", "payments")
    assert keys.audit_entry(7) == b"/cp/audit/00000000000000000007"
    start, end = keys.state_range
    assert start <= keys.resource("Route", "r") < end and start <= keys.status("Rollout", "r") < end
    assert not start <= keys.audit_head < end and not start <= keys.leader < end
    assert _prefix_end(b"/cp/") == b"/cp0" and _prefix_end(b"a\xff") == b"b"
