"""The audit log: append-only entries in etcd, each one keyed to the one before it.

    {prefix}/audit/{seq:020d}  an AuditEntry as canonical JSON
    {prefix}/audit-head        {"seq": N, "hash": "<hash of entry N>"}

An entry is written in the same transaction as the change it records, guarded by
a compare-and-swap on the head key, so the chain is linear and never half-written.
Entries carry redacted documents (`to_document`): never a secret.

An entry's `hash` covers the canonical JSON (sorted keys, no spaces) of every other
field, `prev_hash` included: editing an entry breaks its own hash, deleting one leaves
a gap in `seq`, rewriting the tail breaks the head. Two algorithms (`alg`):

    "hmac-sha256"  HMAC-SHA256 under the audit key, which serve derives from the sealing
                   key (etcd never holds it): without the key nobody can re-hash a tail.
    absent         plain SHA-256: logs written before the keyed chain. Accepted only as
                   a prefix: the first keyed entry chains onto the old head and so seals
                   it, and a plain entry after a keyed one, or at the end of the log of a
                   keyed store, is reported as forged.

What a key cannot show (a deleted tail with the head moved back to an older, genuine
entry; a wiped log) each replica's anchor shows: see `audit_anchor.py`.
"""

from __future__ import annotations

import hashlib
import hmac
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


KEYED = "hmac-sha256"
"""`alg` of an entry chained with HMAC-SHA256 under the audit key."""
PLAIN = ""
"""`alg` of a plain SHA-256 entry (written before the keyed chain); absent in its JSON."""


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
    alg: str = PLAIN

    @classmethod
    def chain(cls, record: AuditRecord, *, seq: int, time: float, prev_hash: str,
              key: bytes | None = None) -> AuditEntry:
        """Number `record` as entry `seq`, linked to the entry whose hash is `prev_hash`;
        keyed (HMAC-SHA256) under `key`, plain SHA-256 without one."""
        body: dict[str, Any] = {
            "seq": seq, "time": time, "actor": record.actor, "action": record.action,
            "kind": record.kind, "name": record.name, "reason": record.reason,
            "before": _plain(record.before), "after": _plain(record.after),
            "prev_hash": prev_hash,
        }
        if key is not None:
            body["alg"] = KEYED
        return cls(**body, hash=_digest(body, key))

    def to_json(self) -> bytes:
        return _canonical(self._document())

    @classmethod
    def from_json(cls, raw: bytes) -> AuditEntry:
        """Errors:
        ValueError: not an audit entry (bad JSON, missing or unknown fields).
        """
        data = json.loads(raw)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) not in (names, names - {"alg"}):
            raise ValueError("not an audit entry: its fields differ")
        return cls(**data)

    @property
    def keyed(self) -> bool:
        return self.alg == KEYED

    def expected_hash(self, key: bytes | None = None) -> str:
        """The hash this entry's content calls for (differs from `hash` once edited).
        A keyed entry needs `key`; without it (or with another) it never matches."""
        body = {k: v for k, v in self._document().items() if k != "hash"}
        if self.alg not in (PLAIN, KEYED) or (self.keyed and key is None):
            return ""
        return _digest(body, key if self.keyed else None)

    def _document(self) -> dict[str, Any]:
        # A plain entry's JSON has no `alg`: it hashes as it did when it was written.
        doc = asdict(self)
        if self.alg == PLAIN:
            del doc["alg"]
        return doc


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
    records: Sequence[AuditRecord], *, head: AuditHead, time: float, key: bytes | None = None
) -> tuple[list[AuditEntry], AuditHead]:
    """Number and link `records` after `head` (keyed under `key` when given); returns the
    entries and the new head."""
    entries: list[AuditEntry] = []
    for record in records:
        entry = AuditEntry.chain(record, seq=head.seq + 1, time=time, prev_hash=head.hash,
                                 key=key)
        entries.append(entry)
        head = AuditHead(entry.seq, entry.hash)
    return entries, head


def verify_chain(entries: Sequence[AuditEntry], head: AuditHead, *, key: bytes | None = None,
                 anchor: AuditHead | None = None, anchored_in: str = "") -> list[str]:
    """Every break in the chain (entries sorted by seq): an edited entry, a missing one,
    a plain entry where only keyed ones may be, a head that disagrees with the log's end,
    a log that lost what this replica's `anchor` (kept in `anchored_in`) saw. Empty when
    intact.

    `key`: the audit key; given, keyed entries are checked and a log must end keyed
    (serve seals a plain log on start). Without it keyed entries cannot be checked.
    """
    problems: list[str] = []
    prev_hash, expected_seq, keyed_seen, unkeyable = "", 1, False, False
    for entry in entries:
        if entry.seq > expected_seq:
            missing = (f"entry {expected_seq}" if entry.seq == expected_seq + 1
                       else f"entries {expected_seq}..{entry.seq - 1}")
            problems.append(f"{missing} missing (deleted?)")
        unkeyable = unkeyable or (entry.keyed and key is None)
        broken = _broken(entry, key, keyed_seen=keyed_seen)
        if broken:
            problems.append(broken)
        elif entry.prev_hash != prev_hash and entry.seq == expected_seq:
            problems.append(f"entry {entry.seq} does not chain to entry {entry.seq - 1}")
        keyed_seen = keyed_seen or entry.keyed
        prev_hash, expected_seq = entry.hash, entry.seq + 1
    if unkeyable:
        problems.append("the log holds keyed entries (HMAC-SHA256): checking them needs "
                        "the audit key (the sealing key's file: --key-file)")
    last = expected_seq - 1
    if head.seq != last:
        problems.append(f"the head says entry {head.seq} is the last, the log ends at {last}")
    elif head.seq and head.hash != prev_hash:
        problems.append(f"the head's hash does not match entry {head.seq} (rewritten?)")
    if key is not None and entries and not entries[-1].keyed:
        problems.append(f"the log ends with entry {last}, chained with plain SHA-256: no "
                        "keyed entry seals it (forged, or written by a replica that "
                        "predates the keyed chain)")
    if anchor is not None:
        problems += anchor_problems(entries, anchor, anchored_in)
    return problems


def _broken(entry: AuditEntry, key: bytes | None, *, keyed_seen: bool) -> str:
    """What is wrong with `entry` by itself (its algorithm, its hash); empty when nothing
    is, or when it is keyed and there is no key to check it with."""
    if entry.alg not in (PLAIN, KEYED):
        return f"entry {entry.seq} names an unknown chain algorithm {entry.alg!r}"
    if entry.keyed and key is None:
        return ""
    if not entry.keyed and keyed_seen:
        return (f"entry {entry.seq} is chained with plain SHA-256 after keyed entries: "
                "written without the audit key (forged)")
    if entry.expected_hash(key) != entry.hash:
        return f"entry {entry.seq} was modified: " + (
            "HMAC mismatch (its content does not match its HMAC under this control "
            "plane's audit key)" if entry.keyed else "its hash does not match its content")
    return ""


def anchor_problems(entries: Sequence[AuditEntry], anchor: AuditHead,
                    anchored_in: str) -> list[str]:
    """What the log (sorted by seq) lost of what this replica saw: its `anchor`, the last
    (seq, hash) it wrote or verified, kept in the file `anchored_in` outside etcd."""
    if not anchor.seq:
        return []
    where = f"anchored in {anchored_in}" if anchored_in else "anchored"
    if not entries:
        return [f"the log is empty but {anchor.seq} entries were {where}: wiped"]
    last = entries[-1].seq
    if last < anchor.seq:
        return [f"entry {last + 1} missing: the log ends at {last} but this replica saw "
                f"{anchor.seq} ({where}): truncated"]
    seen = next((e for e in entries if e.seq == anchor.seq), None)
    if seen is not None and seen.hash != anchor.hash:
        return [f"entry {anchor.seq} is not the one this replica saw ({where}): the log "
                f"was rewritten at or before entry {anchor.seq}"]
    return []  # a missing entry at the anchor is a gap, reported by the chain


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


async def verify_audit(kv: EtcdKV, keys: Keys, *, key: bytes | None = None,
                       anchor: AuditHead | None = None, anchored_in: str = "",
                       ) -> tuple[list[str], AuditHead]:
    """Every problem with the log in etcd: unreadable or misplaced entries, then the
    chain's breaks (`verify_chain`); and the head read."""
    problems, head, entries = await _load(kv, keys)
    return problems + verify_chain(entries, head, key=key, anchor=anchor,
                                   anchored_in=anchored_in), head


EXPORT_FORMAT = "controlplane-audit-export/1"


async def export_audit(kv: EtcdKV, keys: Keys, *, anchor: AuditHead | None,
                       anchored_in: str) -> dict[str, Any]:
    """The log as one JSON document for `verify_export`: entries, head, anchor, and what
    could not be read (so that an offline check reports it too)."""
    problems, head, entries = await _load(kv, keys)
    return {
        "format": EXPORT_FORMAT,
        "entries": [json.loads(e.to_json()) for e in entries],
        "head": json.loads(head.to_json()),
        "anchor": None if anchor is None else {**json.loads(anchor.to_json()),
                                                "path": anchored_in},
        "problems": problems,
    }


def verify_export(doc: Mapping[str, Any], *, key: bytes | None,
                  anchor: AuditHead | None = None, anchored_in: str = "") -> list[str]:
    """Every problem in an exported log (see `export_audit`), checked offline with the
    audit `key`, against the anchor exported with it or, when given, `anchor`.

    Errors:
        ValueError: not an export (its format, or an entry, unreadable).
    """
    if not isinstance(doc, Mapping) or doc.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not an audit export: its format is not {EXPORT_FORMAT!r}")
    entries = sorted((AuditEntry.from_json(_canonical(e)) for e in doc["entries"]),
                     key=lambda e: e.seq)
    head = AuditHead.from_json(_canonical(doc["head"]))
    if anchor is None and doc.get("anchor"):
        anchor = AuditHead.from_json(_canonical(doc["anchor"]))
        anchored_in = f"{doc['anchor'].get('path', '')} when exported"
    return [str(p) for p in doc.get("problems", [])] + verify_chain(
        entries, head, key=key, anchor=anchor, anchored_in=anchored_in)


async def _load(kv: EtcdKV, keys: Keys) -> tuple[list[str], AuditHead, list[AuditEntry]]:
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
    return problems, head, entries


def _plain(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # Normalised through JSON, so an entry read back hashes as it did when written.
    return None if doc is None else dict(json.loads(_canonical(dict(doc))))


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _digest(body: Mapping[str, Any], key: bytes | None) -> str:
    if key is None:
        return hashlib.sha256(_canonical(body)).hexdigest()
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()
