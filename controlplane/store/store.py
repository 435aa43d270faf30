"""Desired state in etcd: validated, compare-and-swapped, audited, watched.

Every mutation is one etcd transaction: the changed keys, guarded by the mod
revisions they had when read, plus their audit entries, guarded by the audit
head. A lost race re-reads and retries; nothing is ever half-written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from controlplane.errors import ConflictError, InvalidInputError, NotFoundError
from controlplane.errors import StoreUnavailableError as Unavailable
from controlplane.model import DesiredState, Resource, from_stored, to_document, to_stored
from controlplane.model.status import RolloutStatus
from controlplane.store.audit import AuditEntry, AuditRecord, verify_chain
from controlplane.store.keys import Keys
from controlplane.store.kv import KV, Compacted, EtcdKV

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 5
RETRY_MIN_S, RETRY_MAX_S = 0.1, 2.0


@dataclass(frozen=True)
class Change:
    """What apply or delete did to one resource: created | configured | unchanged | deleted."""

    kind: str
    name: str
    action: str


@dataclass(frozen=True)
class ApplyResult:
    changes: list[Change]
    revision: int
    state_before: DesiredState
    state_after: DesiredState


@dataclass(frozen=True)
class _Snapshot:
    state: DesiredState
    kvs: Mapping[bytes, KV]
    revision: int


class Store:
    """The control plane's only way to read and write etcd. Build with `await Store.connect`."""

    def __init__(self, kv: EtcdKV, keys: Keys) -> None:
        self._kv = kv
        self.keys = keys

    @classmethod
    async def connect(cls, endpoints: Sequence[str], *, prefix: str = "/controlplane") -> Store:
        """Errors:
        StoreUnavailableError: no endpoint answers.
        """
        store = cls(EtcdKV(endpoints), Keys(prefix))
        await store.load()  # fail fast with a clear error
        return store

    @property
    def kv(self) -> EtcdKV:
        return self._kv

    async def close(self) -> None:
        await self._kv.close()

    # ---- reads ----------------------------------------------------------------------------

    async def _snapshot(self) -> _Snapshot:
        got = await self._kv.range(*self.keys.state_range)
        resources, kvs, statuses = [], {}, {}
        for kv in got.kvs:
            try:
                if kv.key.startswith(self.keys.statuses):
                    kind, name = self.keys.parse_status(kv.key)
                    if kind == "Rollout":
                        statuses[name] = RolloutStatus.from_json(kv.value)
                else:
                    resources.append(from_stored(kv.value))
            except (ValueError, TypeError) as exc:  # written by hand, or by a newer version
                log.error("ignoring unreadable %s: %s", kv.key.decode(), exc)
                continue
            kvs[kv.key] = kv
        return _Snapshot(DesiredState.of(resources, statuses), kvs, got.revision)

    async def read(self) -> tuple[DesiredState, Mapping[bytes, int], int]:
        """The state, each of its keys' mod revision (for compare-and-swap), the revision."""
        snap = await self._snapshot()
        return snap.state, {k: kv.mod_revision for k, kv in snap.kvs.items()}, snap.revision

    async def load(self) -> tuple[DesiredState, int]:
        """The whole desired state and the etcd revision it was read at."""
        snap = await self._snapshot()
        return snap.state, snap.revision

    async def get(self, kind: str, name: str) -> Resource:
        got = await self._kv.get(self.keys.resource(kind, name))
        if got is None:
            raise NotFoundError(f"{kind}/{name} not found; `controlplane get {kind.lower()}s` "
                                "lists what exists")
        return from_stored(got.value)

    async def list_kind(self, kind: str) -> list[Resource]:
        got = await self._kv.range(self.keys.kind_prefix(kind))
        return [from_stored(kv.value) for kv in got.kvs]

    # ---- writes ---------------------------------------------------------------------------

    async def apply(
        self, resources: Sequence[Resource], *, actor: str, dry_run: bool = False
    ) -> ApplyResult:
        """Create or replace `resources`, all or nothing.

        Errors:
            InvalidInputError: the resulting state breaks a rule (every problem listed).
            ConflictError: concurrent writers kept winning; retry.
            StoreUnavailableError: etcd is down; nothing was written.
        """
        for _ in range(CAS_ATTEMPTS):
            snap = await self._snapshot()
            after = snap.state.with_applied(resources)
            problems = after.problems()
            if problems:
                raise InvalidInputError(problems)
            changes, puts, records = [], {}, []
            expect: dict[bytes, int] = {}
            for resource in resources:
                key = self.keys.resource(resource.kind, resource.name)
                old = snap.kvs.get(key)
                new = to_stored(resource)
                if old is not None and old.value == new:
                    changes.append(Change(resource.kind, resource.name, "unchanged"))
                    continue
                action = "configured" if old is not None else "created"
                changes.append(Change(resource.kind, resource.name, action))
                puts[key] = new
                expect[key] = old.mod_revision if old is not None else 0
                before = snap.state.get(resource.kind, resource.name)
                records.append(AuditRecord(
                    actor=actor, action=f"apply/{action}", kind=resource.kind,
                    name=resource.name,
                    before=to_document(before) if before is not None else None,
                    after=to_document(resource),
                ))
            if dry_run or not puts:
                return ApplyResult(changes, snap.revision, snap.state, after)
            revision = await self.commit(puts=puts, expect=expect, audit=records)
            if revision is not None:
                return ApplyResult(changes, revision, snap.state, after)
        raise ConflictError("other writers kept changing the same resources; apply again")

    async def delete(self, kind: str, name: str, *, actor: str) -> Change:
        """Errors:
        NotFoundError: no such resource.
        InvalidInputError: other resources still reference it.
        """
        key = self.keys.resource(kind, name)
        for _ in range(CAS_ATTEMPTS):
            snap = await self._snapshot()
            old = snap.kvs.get(key)
            resource = snap.state.get(kind, name)
            if old is None or resource is None:
                raise NotFoundError(f"{kind}/{name} not found")
            problems = snap.state.without(kind, name).problems()
            if problems:
                raise InvalidInputError(problems)
            record = AuditRecord(actor=actor, action="delete", kind=kind, name=name,
                                 before=to_document(resource))
            deletes = [key]
            if kind == "Rollout":  # its status goes with it
                deletes.append(self.keys.status(kind, name))
            revision = await self.commit(
                puts={}, deletes=deletes, expect={key: old.mod_revision}, audit=[record]
            )
            if revision is not None:
                return Change(kind, name, "deleted")
        raise ConflictError(f"{kind}/{name} kept changing; delete again")

    async def commit(
        self,
        *,
        puts: Mapping[bytes, bytes],
        expect: Mapping[bytes, int],
        audit: Sequence[AuditRecord],
        deletes: Sequence[bytes] = (),
        lease: int | None = None,
        expect_values: Mapping[bytes, bytes] | None = None,
    ) -> int | None:
        """Write `puts`/`deletes` and append `audit`, in one transaction guarded by `expect`
        (key → mod revision, 0 for absent) and `expect_values`. Returns the new revision,
        or None when a guard failed (re-read and decide again)."""
        head = await self._kv.get(self.keys.audit_head)
        seq, prev_hash = 0, ""
        if head is not None:
            data = json.loads(head.value)
            seq, prev_hash = int(data["seq"]), str(data["hash"])
        all_puts = dict(puts)
        now = time.time()
        for record in audit:
            seq += 1
            entry = AuditEntry.chain(record, seq=seq, time=now, prev_hash=prev_hash)
            all_puts[self.keys.audit_entry(seq)] = entry.to_json()
            prev_hash = entry.hash
        if audit:
            all_puts[self.keys.audit_head] = json.dumps({"seq": seq, "hash": prev_hash}).encode()
        guards = dict(expect)
        if audit:
            guards[self.keys.audit_head] = head.mod_revision if head is not None else 0
        ok = await self._kv.txn(expect=guards, puts=all_puts, deletes=deletes, lease=lease,
                                expect_values=expect_values)
        if not ok:
            return None
        return (await self._kv.range(self.keys.audit_head)).revision

    # ---- audit ----------------------------------------------------------------------------

    async def audit(self, *, since: float | None = None) -> list[AuditEntry]:
        """Audit entries, oldest first (`since`: seconds since the epoch)."""
        got = await self._kv.range(self.keys.audit)
        entries = [AuditEntry.from_json(kv.value) for kv in got.kvs]
        return [e for e in entries if since is None or e.time >= since]

    async def verify_audit(self) -> list[str]:
        """Problems in the chain; empty when intact."""
        head = await self._kv.get(self.keys.audit_head)
        head_seq, head_hash = 0, ""
        if head is not None:
            data = json.loads(head.value)
            head_seq, head_hash = int(data["seq"]), str(data["hash"])
        got = await self._kv.range(self.keys.audit)
        entries = []
        problems = []
        for kv in got.kvs:
            try:
                entries.append(AuditEntry.from_json(kv.value))
            except (ValueError, TypeError):
                problems.append(f"{kv.key.decode()} is not an audit entry")
        return problems + verify_chain(entries, head_seq, head_hash)

    # ---- watch ----------------------------------------------------------------------------

    async def watch_state(self) -> AsyncIterator[tuple[DesiredState, int]]:
        """The state now, then again after every change, for as long as it is iterated.

        Survives etcd restarts (resumes from the last revision seen) and compaction
        (re-lists). Each state is a consistent read, so a multi-key change is seen whole.
        """
        delay = RETRY_MIN_S
        while True:
            try:
                state, revision = await self.load()
                break
            except Unavailable as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        yield state, revision
        seen = revision
        while True:
            try:
                start, end = self.keys.state_range
                async for event in self._kv.watch(start, seen + 1, end):
                    if event.mod_revision <= seen:
                        continue  # already part of the last consistent read
                    state, revision = await self.load()
                    seen = max(revision, event.mod_revision)
                    delay = RETRY_MIN_S
                    yield state, revision
            except Compacted:
                log.warning("watch revision %d was compacted; re-listing", seen + 1)
                state, revision = await self.load()
                seen = revision
                yield state, revision
            except Unavailable as exc:
                log.warning("%s; resuming the watch from revision %d in %.1fs",
                            exc, seen + 1, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
