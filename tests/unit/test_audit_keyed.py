"""The keyed audit chain, the upgrade from plain SHA-256, the anchor and the offline
export check, without etcd."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from controlplane.secrets.crypto import SealingKey
from controlplane.store.audit import (
    EXPORT_FORMAT,
    AuditEntry,
    AuditHead,
    AuditRecord,
    chain_entries,
    verify_chain,
    verify_export,
)
from controlplane.store.audit_anchor import AUDIT_KEY_PURPOSE, AuditAnchor

KEY = b"k" * 32


def records(n: int) -> list[AuditRecord]:
    return [AuditRecord(actor="alice", action="apply/created", kind="Upstream", name=f"u{i}",
                        after={"spec": {"n": i}}) for i in range(n)]


def forge(entries: list[AuditEntry], *, prev: str, keep_alg: bool) -> list[AuditEntry]:
    """What an attacker without the key does: re-hash entries with SHA-256 over their
    JSON, relinked from `prev` (keeping or dropping the `alg` field)."""
    out = []
    for entry in entries:
        doc = json.loads(entry.to_json())
        if not keep_alg:
            doc.pop("alg", None)
        doc.pop("hash")
        doc["prev_hash"] = prev
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        doc["hash"] = prev = hashlib.sha256(canonical).hexdigest()
        out.append(AuditEntry.from_json(json.dumps(doc).encode()))
    return out


def test_a_keyed_chain_verifies_only_with_its_key() -> None:
    entries, head = chain_entries(records(3), head=AuditHead(), time=1.0, key=KEY)
    assert all(e.keyed for e in entries)
    assert verify_chain(entries, head, key=KEY) == []
    assert AuditEntry.from_json(entries[1].to_json()) == entries[1]
    wrong = verify_chain(entries, head, key=b"x" * 32)
    assert any("entry 1 was modified: HMAC mismatch" in p for p in wrong), wrong
    keyless = verify_chain(entries, head)
    assert any("needs the audit key" in p for p in keyless), keyless


@pytest.mark.parametrize(
    ("keep_alg", "problem"),
    [
        pytest.param(True, "entry 2 was modified: HMAC mismatch", id="alg-kept"),
        pytest.param(False, "entry 2 is chained with plain SHA-256 after keyed entries",
                     id="alg-dropped"),
    ],
)
def test_a_tail_rehashed_with_plain_sha256_is_caught(keep_alg: bool, problem: str) -> None:
    entries, _ = chain_entries(records(4), head=AuditHead(), time=1.0, key=KEY)
    edited = [dataclasses.replace(entries[1], actor="mallory"), *entries[2:]]
    forged = [entries[0], *forge(edited, prev=entries[0].hash, keep_alg=keep_alg)]
    head = AuditHead(4, forged[-1].hash)  # the head moved to the forged end
    problems = verify_chain(forged, head, key=KEY)
    assert any(problem in p for p in problems), problems


def test_a_log_rewritten_whole_with_plain_sha256_is_caught_by_its_unkeyed_end() -> None:
    entries, _ = chain_entries(records(3), head=AuditHead(), time=1.0, key=KEY)
    forged = forge(entries, prev="", keep_alg=False)
    problems = verify_chain(forged, AuditHead(3, forged[-1].hash), key=KEY)
    assert any("the log ends with entry 3, chained with plain SHA-256" in p
               for p in problems), problems


def test_an_old_plain_log_stays_valid_under_the_keyed_entries_that_follow_it() -> None:
    old, head = chain_entries(records(2), head=AuditHead(), time=1.0)
    new, head = chain_entries(records(2), head=head, time=2.0, key=KEY)
    assert [e.keyed for e in old + new] == [False, False, True, True]
    assert new[0].prev_hash == old[-1].hash  # the first keyed entry seals the old head
    assert b'"alg"' not in old[0].to_json()  # a plain entry's JSON is as it always was
    assert verify_chain(old + new, head, key=KEY) == []
    edited = [dataclasses.replace(old[0], actor="mallory"), old[1]]
    problems = verify_chain(forge(edited, prev="", keep_alg=False) + new, head, key=KEY)
    assert any("entry 3 does not chain to entry 2" in p for p in problems), problems


@pytest.mark.parametrize(
    ("keep", "anchor_at", "problem"),
    [
        pytest.param(3, 4, "entry 4 missing: the log ends at 3 but this replica saw 4 "
                           "(anchored in DIR/audit.anchor): truncated", id="truncated"),
        pytest.param(0, 4, "the log is empty but 4 entries were anchored in "
                           "DIR/audit.anchor: wiped", id="wiped"),
    ],
)
def test_the_anchor_catches_what_the_key_cannot(keep: int, anchor_at: int,
                                                problem: str) -> None:
    entries, _ = chain_entries(records(4), head=AuditHead(), time=1.0, key=KEY)
    anchor = AuditHead(anchor_at, entries[anchor_at - 1].hash)
    left = entries[:keep]
    # The head moved back to a genuine earlier entry: the chain alone is intact.
    head = AuditHead(keep, left[-1].hash) if left else AuditHead()
    assert verify_chain(left, head, key=KEY) == []
    assert verify_chain(left, head, key=KEY, anchor=anchor,
                        anchored_in="DIR/audit.anchor") == [problem]


def test_the_anchor_catches_a_log_regrown_past_it() -> None:
    entries, _ = chain_entries(records(3), head=AuditHead(), time=1.0, key=KEY)
    anchor = AuditHead(3, entries[2].hash)
    regrown, head = chain_entries(records(5), head=AuditHead(), time=9.0, key=KEY)
    problems = verify_chain(regrown, head, key=KEY, anchor=anchor, anchored_in="A")
    assert problems == ["entry 3 is not the one this replica saw (anchored in A): the log "
                        "was rewritten at or before entry 3"]


def test_the_anchor_file_is_private_atomic_and_only_moves_forward(tmp_path: Path) -> None:
    path = tmp_path / "audit.anchor"
    anchor = AuditAnchor(path)
    assert anchor.head == AuditHead() and not path.exists()
    anchor.advance(AuditHead(5, "ab"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"seq": 5, "hash": "ab"}
    anchor.advance(AuditHead(3, "cd"))  # never back
    assert AuditAnchor(path).head == AuditHead(5, "ab")
    assert [p.name for p in tmp_path.iterdir()] == ["audit.anchor"]  # no temp file left


def test_an_unreadable_anchor_is_reported_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.anchor"
    path.write_text("garbage")
    anchor = AuditAnchor(path)
    assert "unreadable" in anchor.problem and "remove the file" in anchor.problem
    anchor.advance(AuditHead(9, "ef"))
    assert path.read_text() == "garbage"


def test_an_anchor_that_cannot_be_written_stays_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    anchor = AuditAnchor(tmp_path / "gone" / "audit.anchor")
    (tmp_path / "gone").write_text("")  # its directory cannot be made now
    with caplog.at_level(logging.ERROR):
        anchor.advance(AuditHead(2, "ab"))  # no exception: the write it follows landed
    assert anchor.head == AuditHead()
    assert "cannot write the audit anchor" in caplog.text


def test_the_audit_key_is_derived_per_purpose_and_stable() -> None:
    raw = SealingKey.generate()
    key = SealingKey(raw).derive(AUDIT_KEY_PURPOSE)
    assert len(key) == 32 and key == SealingKey(raw).derive(AUDIT_KEY_PURPOSE)
    assert key != SealingKey(raw).derive(b"other") and raw not in key
    assert key != SealingKey(SealingKey.generate()).derive(AUDIT_KEY_PURPOSE)


def export_doc(entries: list[AuditEntry], head: AuditHead,
               anchor: AuditHead | None = None) -> dict[str, Any]:
    return {"format": EXPORT_FORMAT, "entries": [json.loads(e.to_json()) for e in entries],
            "head": json.loads(head.to_json()), "problems": [],
            "anchor": None if anchor is None else {**json.loads(anchor.to_json()),
                                                   "path": "/d/audit.anchor"}}


def test_an_export_verifies_offline_and_keeps_its_anchor() -> None:
    entries, head = chain_entries(records(3), head=AuditHead(), time=1.0, key=KEY)
    doc = json.loads(json.dumps(export_doc(entries, head, head)))  # as read from a file
    assert verify_export(doc, key=KEY) == []
    truncated = export_doc(entries[:2], AuditHead(2, entries[1].hash), head)
    assert verify_export(truncated, key=KEY) == [
        "entry 3 missing: the log ends at 2 but this replica saw 3 (anchored in "
        "/d/audit.anchor when exported): truncated"]
    assert verify_export(truncated, key=KEY, anchor=AuditHead(2, entries[1].hash),
                         anchored_in="mine") == []
    with pytest.raises(ValueError, match="not an audit export"):
        verify_export({"entries": []}, key=KEY)


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        pytest.param(["--file", "x.json"], "--file", id="file-without-verify"),
        pytest.param(["--verify", "--key-file", "k"], "--key-file", id="key-without-file"),
        pytest.param(["--verify", "--anchor", "a"], "--anchor", id="anchor-without-file"),
        pytest.param(["--export", "x.json", "--verify"], "--export", id="export-and-verify"),
        pytest.param(["--verify", "--file", "/nonexistent.json"], "--file", id="no-such-file"),
    ],
)
def test_audit_flags_that_do_not_go_together_are_usage_errors(argv: list[str],
                                                              field: str) -> None:
    from controlplane.cli.main import build_parser
    from controlplane.errors import InvalidInputError
    from controlplane.main import _server_commands

    args = build_parser(_server_commands).parse_args(["audit", *argv])
    with pytest.raises(InvalidInputError) as info:
        args.handler(args)  # before any server is called: none listens here
    assert [e.location for e in info.value.errors] == [field]


def test_a_bad_anchor_file_is_a_usage_error(tmp_path: Path) -> None:
    from controlplane.cli.audit_cmd import verify_file
    from controlplane.errors import InvalidInputError

    export = tmp_path / "audit.json"
    export.write_text(json.dumps(export_doc([], AuditHead())))
    (tmp_path / "anchor").write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match="--anchor"):
        verify_file(export, key_file=None, anchor_file=str(tmp_path / "anchor"), fmt=None)
    assert verify_file(export, key_file=None, anchor_file=None, fmt=None) == 0


def test_offline_verify_takes_the_key_from_the_environment_as_serve_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from controlplane.cli.audit_cmd import verify_file

    raw = SealingKey.generate()
    key = SealingKey(raw).derive(AUDIT_KEY_PURPOSE)
    entries, head = chain_entries(records(2), head=AuditHead(), time=1.0, key=key)
    export = tmp_path / "audit.json"
    export.write_text(json.dumps(export_doc(entries, head)))
    assert verify_file(export, key_file=None, anchor_file=None, fmt=None) == 1
    monkeypatch.setenv("CONTROLPLANE_SECRETS_KEY", raw.decode())
    assert verify_file(export, key_file=None, anchor_file=None, fmt=None) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "audit log intact: 2 entries"
