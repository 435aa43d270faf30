"""The audit log: append-only entries in etcd, each hashing the one before it.

An entry is written in the same transaction as the change it records, guarded by
a compare-and-swap on the head key, so the chain is linear and never half-written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AuditRecord:
    """What happened, before the store numbers and chains it."""

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
        body = {
            "seq": seq, "time": time, "actor": record.actor, "action": record.action,
            "kind": record.kind, "name": record.name, "reason": record.reason,
            "before": record.before, "after": record.after, "prev_hash": prev_hash,
        }
        return cls(**body, hash=_digest(body))  # type: ignore[arg-type]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AuditEntry:
        return cls(**json.loads(raw))

    def expected_hash(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k != "hash"}
        return _digest(body)


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def verify_chain(entries: Sequence[AuditEntry], head_seq: int, head_hash: str) -> list[str]:
    """Every break in the chain: an edited entry, a missing one, a head that disagrees."""
    problems: list[str] = []
    prev_hash, expected_seq = "", 1
    for entry in entries:
        if entry.seq != expected_seq:
            problems.append(f"entry {expected_seq}..{entry.seq - 1} missing (deleted?)")
        if entry.expected_hash() != entry.hash:
            problems.append(f"entry {entry.seq} was modified: its hash does not match its content")
        if entry.prev_hash != prev_hash:
            problems.append(f"entry {entry.seq} does not chain to the entry before it")
        prev_hash, expected_seq = entry.hash, entry.seq + 1
    if head_seq != expected_seq - 1 or (head_seq and head_hash != prev_hash):
        problems.append(
            f"the head says entry {head_seq} is last, the log ends at entry {expected_seq - 1}"
        )
    return problems
