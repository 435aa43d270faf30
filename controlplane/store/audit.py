"""The audit log: append-only entries in etcd, each hashing the one before it.

    {prefix}/audit/{seq:020d}  an AuditEntry as canonical JSON
    {prefix}/audit-head        {"seq": N, "hash": "<hash of entry N>"}

An entry is written in the same transaction as the change it records, guarded by
a compare-and-swap on the head key, so the chain is linear and never half-written.
Entries carry redacted documents (`to_document`): never a secret.

The hash is sha256 over the canonical JSON (sorted keys, no spaces) of every field
but `hash`, `prev_hash` included: editing an entry breaks its own hash, deleting one
leaves a gap in `seq`, and rewriting the tail breaks the head.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from controlplane.store.keys import Keys
from controlplane.store.kv import EtcdKV


@dataclass(frozen=True)
class AuditRecord:
    """What happened, before the store numbers and chains it.

    Attributes:
        action: e.g. `apply/created`, `apply/configured`, `delete`, `rollout/Paused`.
        before, after: redacted documents (or summaries); None when absent.
    """

    actor: str
    action: str
    kind: str
    name: str
    reason: str = ""
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One link of the chain; `hash` covers every other field, `prev_hash` included."""

    seq: int
    time: float
    actor: str
    action: str
    kind: str
    name: str
    reason: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    prev_hash: str
    hash: str

    @classmethod
    def chain(cls, record: AuditRecord, *, seq: int, time: float, prev_hash: str) -> AuditEntry:
        """Number `record` as entry `seq`, linked to the entry whose hash is `prev_hash`."""
        body: dict[str, Any] = {
            "seq": seq, "time": time, "actor": record.actor, "action": record.action,
            "kind": record.kind, "name": record.name, "reason": record.reason,
            "before": _plain(record.before), "after": _plain(record.after),
            "prev_hash": prev_hash,
        }
        return cls(**body, hash=_digest(body))

    def to_json(self) -> bytes:
        return _canonical(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> AuditEntry:
        """Errors:
        ValueError: not an audit entry (bad JSON, missing or unknown fields).
        """
        data = json.loads(raw)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError("not an audit entry: its fields differ")
        return cls(**data)

    def expected_hash(self) -> str:
        """The hash this entry's content calls for (differs from `hash` once edited)."""
        return _digest({k: v for k, v in asdict(self).items() if k != "hash"})


@dataclass(frozen=True)
class AuditHead:
    """The last entry's number and hash (0 and "" for an empty log)."""

    seq: int = 0
    hash: str = ""

    def to_json(self) -> bytes:
        return _canonical({"seq": self.seq, "hash": self.hash})

    @classmethod
    def from_json(cls, raw: bytes) -> AuditHead:
        """Errors:
        ValueError: not a head record.
        """
        try:
            data = json.loads(raw)
            return cls(int(data["seq"]), str(data["hash"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an audit head: {exc!r}") from exc


def chain_entries(
    records: Sequence[AuditRecord], *, head: AuditHead, time: float
) -> tuple[list[AuditEntry], AuditHead]:
    """Number and link `records` after `head`; returns the entries and the new head."""
    entries: list[AuditEntry] = []
    for record in records:
        entry = AuditEntry.chain(record, seq=head.seq + 1, time=time, prev_hash=head.hash)
        entries.append(entry)
        head = AuditHead(entry.seq, entry.hash)
    return entries, head


def verify_chain(entries: Sequence[AuditEntry], head: AuditHead) -> list[str]:
    """Every break in the chain (entries sorted by seq): an edited entry, a missing one,
    a head that disagrees with the log's end. Empty when intact."""
    problems: list[str] = []
    prev_hash, expected_seq = "", 1
    for entry in entries:
        if entry.seq > expected_seq:
            missing = (f"entry {expected_seq}" if entry.seq == expected_seq + 1
                       else f"entries {expected_seq}..{entry.seq - 1}")
            problems.append(f"{missing} missing (deleted?)")
        if entry.expected_hash() != entry.hash:
            problems.append(f"entry {entry.seq} was modified: its hash does not match its content")
        elif entry.prev_hash != prev_hash and entry.seq == expected_seq:
            problems.append(f"entry {entry.seq} does not chain to entry {entry.seq - 1}")
        prev_hash, expected_seq = entry.hash, entry.seq + 1
    last = expected_seq - 1
    if head.seq != last:
        problems.append(f"the head says entry {head.seq} is the last, the log ends at {last}")
    elif head.seq and head.hash != prev_hash:
        problems.append(f"the head's hash does not match entry {head.seq} (rewritten?)")
    return problems


async def read_audit(kv: EtcdKV, keys: Keys, *, since: float | None = None) -> list[AuditEntry]:
    """Readable entries, oldest first; only those at or after `since` when given."""
    entries = []
    for raw in (await kv.range(keys.audit)).kvs:
        try:
            entry = AuditEntry.from_json(raw.value)
        except (ValueError, TypeError):
            continue
        if since is None or entry.time >= since:
            entries.append(entry)
    return entries


async def verify_audit(kv: EtcdKV, keys: Keys) -> list[str]:
    """Every problem with the log in etcd: unreadable or misplaced entries, then the
    chain's breaks (`verify_chain`)."""
    problems: list[str] = []
    head_kv = await kv.get(keys.audit_head)
    try:
        head = AuditHead() if head_kv is None else AuditHead.from_json(head_kv.value)
    except ValueError:
        problems.append(f"{keys.audit_head.decode()} is unreadable")
        head = AuditHead()
    entries: list[AuditEntry] = []
    for raw in (await kv.range(keys.audit)).kvs:
        try:
            entry = AuditEntry.from_json(raw.value)
        except (ValueError, TypeError):
            problems.append(f"{raw.key.decode(errors='replace')} is not an audit entry")
            continue
        if raw.key != keys.audit_entry(entry.seq):
            problems.append(f"{raw.key.decode()} holds entry {entry.seq} (moved?)")
        entries.append(entry)
    entries.sort(key=lambda e: e.seq)
    return problems + verify_chain(entries, head)


def _plain(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # Normalised through JSON, so an entry read back hashes as it did when written.
    return None if doc is None else dict(json.loads(_canonical(dict(doc))))


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(body)).hexdigest()
