"""Desired state in etcd: validated, compare-and-swapped, audited, watched.

Every mutation is one etcd transaction: the changed keys, guarded by the mod
revisions they had when read, plus their audit entries, guarded by the audit
head. A lost race re-reads, re-validates and retries; nothing is ever half-written.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.errors import (
    ConflictError,
    ControlPlaneError,
    FieldError,
    InvalidInputError,
    NotFoundError,
    RequestTooLargeError,
    StoreUnavailableError,
)
from controlplane.model import (
    KINDS,
    DesiredState,
    Resource,
    from_stored,
    to_document,
    to_stored,
)
from controlplane.model.endpoints import Discovered, discovered_from_json
from controlplane.model.ownership import supersede, transition_problems, with_from
from controlplane.model.status import RolloutStatus
from controlplane.store.audit import (
    AuditEntry,
    AuditHead,
    AuditRecord,
    chain_entries,
    export_audit,
    read_audit,
    verify_audit,
)
from controlplane.store.audit_anchor import AuditAnchor
from controlplane.store.keys import DISCOVERED_KIND, LEASED_KIND, Keys
from controlplane.store.kv import KV, EtcdKV, EtcdTLS, TxnResult
from controlplane.store.sealed import Sealer, is_clear, open_stored, seal_stored
from controlplane.store.watch import watch_state

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 5
"""How often apply/delete re-read and retry after losing a compare-and-swap."""
HEAD_ATTEMPTS = 10
"""How often commit re-chains when only the audit head moved (others' unrelated writes)."""


@dataclass(frozen=True)
class Change:
    """What apply or delete did to one resource: created | configured | unchanged | deleted."""

    kind: str
    name: str
    action: str


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of `Store.apply`: per-resource changes and the states around them.

    Attributes:
        revision: the etcd revision of the write (of the read, when nothing was written).
    """

    changes: list[Change]
    revision: int
    state_before: DesiredState
    state_after: DesiredState


@dataclass(frozen=True)
class _Snapshot:
    state: DesiredState
    kvs: Mapping[bytes, KV] = field(repr=False)  # every state key, readable or not
    revision: int


class Noted(Protocol):
    """An audit note from a layer beside the store (the vault's AuditNote)."""

    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def after(self) -> Mapping[str, Any] | None: ...


class Store:
    """The control plane's only way to read and write etcd. Build with `await Store.connect`.

    Safe to share between tasks. `kv` and `keys` are for the control plane's own
    collaborators (leases, fleet reports); they bypass validation and the audit log.
    `sealer` seals inline Credential values before they are written (`store.sealed`);
    without one such values are refused.
    """

    def __init__(self, kv: EtcdKV, keys: Keys, *, sealer: Sealer | None = None) -> None:
        self._kv = kv
        self.keys = keys
        self._sealer = sealer
        self._audit_key: bytes | None = None  # None: plain SHA-256 (tests, tools)
        self.token_key: bytes | None = None
        """Signs token records (`store.tokens`); None: unsigned (tests, tools). Set by
        the server from the sealing key, which etcd never holds."""
        self._anchor: AuditAnchor | None = None

    @classmethod
    async def connect(cls, endpoints: Sequence[str], *, prefix: str = "/controlplane",
                      max_request_bytes: int | None = None,
                      sealer: Sealer | None = None, tls: EtcdTLS | None = None) -> Store:
        """Connect to etcd (`host:port`, `http://` or `https://host:port`, tried in turn).
        `max_request_bytes`: etcd's --max-request-bytes, when known (writes over it are
        refused before they are sent). `sealer`: see the class. `tls`: the CA and client
        pair of an etcd that speaks TLS (the embedded one always does).

        Errors:
            StoreUnavailableError: no endpoint answers.
        """
        kv = EtcdKV(endpoints, max_request_bytes=max_request_bytes, tls=tls)
        store = cls(kv, Keys(prefix.rstrip("/")), sealer=sealer)
        try:
            await kv.get(store.keys.audit_head)  # fail fast with a clear error
        except BaseException:
            await kv.close()
            raise
        return store

    async def key_audit(self, key: bytes, anchor: AuditAnchor) -> None:
        """From now on chain audit entries with HMAC-SHA256 under `key` (which etcd must
        never hold) and keep `anchor`, this replica's memory of the log, up to date.

        A log that ends with a plain SHA-256 entry (written before the keyed chain) is
        sealed at once by a keyed entry chained onto it, unless this replica anchored a
        keyed log before (then the plain end is forged: logged, left for `verify_audit`).
        A log that contradicts the anchor, or whose head is unreadable, is logged as an
        error; serve starts all the same (writes are refused while the head is unreadable).

        Errors:
            ConflictError: the audit head kept moving.
            StoreUnavailableError: etcd is down.
        """
        self._audit_key, self._anchor = key, anchor
        head_kv = await self._kv.get(self.keys.audit_head)
        try:
            head = _head(head_kv)
        except ConflictError as exc:
            log.error("%s", exc)
            return
        if not head.seq or await _ends_keyed(self._kv, self.keys.audit_entry(head.seq)):
            await anchor.follow(self._kv, self.keys, head)
        elif anchor.head.seq:
            log.error("the audit log ends with entry %d, chained with plain SHA-256, after "
                      "this replica anchored keyed entries (%s): forged? `controlplane audit "
                      "--verify` reports it", head.seq, anchor.path)
        else:  # once, whichever replica starts first: the guard is the next entry's key
            await self.commit(puts={}, expect={self.keys.audit_entry(head.seq + 1): 0},
                              audit=[AuditRecord(
                actor="controlplane", action="audit/keyed", kind="AuditLog", name="chain",
                reason=f"entries after {head.seq} are chained with HMAC-SHA256 under the "
                       "audit key; this one seals the plain SHA-256 entries before it")])

    @property
    def kv(self) -> EtcdKV:
        return self._kv

    async def close(self) -> None:
        await self._kv.close()

    # ---- reads ----------------------------------------------------------------------------

    async def _snapshot(self) -> _Snapshot:
        got = await self._kv.range(*self.keys.state_range)
        resources: list[Resource] = []
        statuses: dict[str, RolloutStatus] = {}
        discovered: dict[tuple[str, str], tuple[Discovered, ...]] = {}
        for kv in got.kvs:
            try:
                if kv.key.startswith(self.keys.statuses):
                    kind, name = self.keys.parse_status(kv.key)
                    if kind == "Rollout":
                        statuses[name] = RolloutStatus.from_json(kv.value)
                    elif kind in (DISCOVERED_KIND, LEASED_KIND):  # one set per version
                        upstream, _, version = name.partition("/")
                        discovered[(upstream, version)] = (
                            *discovered.get((upstream, version), ()),
                            *discovered_from_json(kv.value))
                elif kv.key.startswith(self.keys.resources):
                    resources.append(from_stored(open_stored(kv.value, self._sealer)))
            # Written by hand, by a newer version, or sealed with another key.
            except (ValueError, TypeError, ControlPlaneError) as exc:
                log.error("ignoring unreadable %s: %s", kv.key.decode(errors="replace"), exc)
        digest = hashlib.sha256()
        for kv in got.kvs:  # in key order: etcd returns a range sorted
            digest.update(b"%d:%b%d:%b" % (len(kv.key), kv.key, len(kv.value), kv.value))
        return _Snapshot(DesiredState.of(resources, statuses, fingerprint=digest.hexdigest(),
                                         discovered=discovered),
                         {kv.key: kv for kv in got.kvs}, got.revision)

    async def load(self) -> tuple[DesiredState, int]:
        """The whole desired state (specs and statuses) and the etcd revision it was read at."""
        snap = await self._snapshot()
        return snap.state, snap.revision

    async def read(self) -> tuple[DesiredState, Mapping[bytes, int], int]:
        """The state, each of its keys' mod revision (for `commit`'s `expect`), the revision."""
        snap = await self._snapshot()
        return snap.state, {k: kv.mod_revision for k, kv in snap.kvs.items()}, snap.revision

    async def get(self, kind: str, name: str) -> Resource:
        """Errors:
        NotFoundError: no such resource.
        InvalidInputError: `kind` is not a kind, or the stored value is unreadable.
        """
        got = await self._kv.get(self.keys.resource(_known(kind), name))
        if got is None:
            raise NotFoundError(f"{kind}/{name} not found; `controlplane get "
                                f"{kind.lower()}s` lists what exists")
        try:
            return from_stored(open_stored(got.value, self._sealer))
        except ValueError as exc:
            raise InvalidInputError([FieldError(
                f"{kind}/{name}", f"the stored value is unreadable ({exc}); apply it again"
            )]) from exc

    async def list(self, kind: str) -> builtins.list[Resource]:
        """Every resource of `kind`, sorted by name (unreadable ones are logged and skipped).

        Errors:
            InvalidInputError: `kind` is not a kind.
        """
        got = await self._kv.range(self.keys.kind_prefix(_known(kind)))
        out: builtins.list[Resource] = []
        for kv in got.kvs:
            try:
                out.append(from_stored(open_stored(kv.value, self._sealer)))
            except (ValueError, ControlPlaneError) as exc:
                log.error("ignoring unreadable %s: %s", kv.key.decode(errors="replace"), exc)
        return out

    # ---- writes ---------------------------------------------------------------------------

    async def apply(
        self, resources: Sequence[Resource], *, actor: str, dry_run: bool = False
    ) -> ApplyResult:
        """Create or replace `resources`, all or nothing; unchanged ones are not written.

        Errors:
            InvalidInputError: duplicates in `resources`, or the resulting state breaks a
                rule (every problem listed); nothing was written.
            ConflictError: concurrent writers kept winning; apply again.
            StoreUnavailableError: etcd is down; nothing was written.
        """
        _check_unique(resources)
        given = resources
        for attempt in range(CAS_ATTEMPTS):
            snap = await self._snapshot()
            resources = with_from(snap.state, given)
            after = snap.state.with_applied(resources)
            problems = after.problems()
            problems += [p for p in transition_problems(snap.state, after) if p not in problems]
            if problems:
                raise InvalidInputError(problems)
            changes: builtins.list[Change] = []
            puts: dict[bytes, bytes] = {}
            expect: dict[bytes, int] = {}
            records: builtins.list[AuditRecord] = []
            for resource in resources:
                key = self.keys.resource(resource.kind, resource.name)
                old = snap.kvs.get(key)
                new = seal_stored(to_stored(resource), self._sealer,
                                  previous=None if old is None else old.value)
                if old is not None and old.value == new:
                    changes.append(Change(resource.kind, resource.name, "unchanged"))
                    continue
                action = "created" if old is None else "configured"
                changes.append(Change(resource.kind, resource.name, action))
                puts[key] = new
                expect[key] = 0 if old is None else old.mod_revision
                before = snap.state.get(resource.kind, resource.name)
                records.append(AuditRecord(
                    actor=actor, action=f"apply/{action}", kind=resource.kind,
                    name=resource.name, before=None if before is None else to_document(before),
                    after=to_document(resource),
                ))
            self._pin_sources(snap, after, puts, expect)
            # A new `active` ends what a finished rollout still holds (its retained `from`).
            for name, status in supersede(snap.state, after, actor=actor,
                                          now=time.time()).items():
                key = self.keys.status("Rollout", name)
                puts[key] = status.to_json()
                expect[key] = snap.kvs[key].mod_revision if key in snap.kvs else 0
                records.append(_superseded_record(actor, name, snap.state.status(name), status))
                after = after.with_status(name, status)
            if dry_run or not puts:
                return ApplyResult(changes, snap.revision, snap.state, after)
            try:
                revision = await self.commit(puts=puts, expect=expect, audit=records)
            except RequestTooLargeError as exc:
                raise _too_large(exc, puts) from None
            if revision is not None:
                return ApplyResult(changes, revision, snap.state, after)
            await _pause(attempt)
        raise ConflictError("other writers kept changing the same resources; apply again")

    def _pin_sources(self, snap: _Snapshot, after: DesiredState, puts: dict[bytes, bytes],
                     expect: dict[bytes, int]) -> None:
        """A new (or re-targeted) rollout's `from` was checked against its upstream's
        `active` as read: rewrite that upstream as it is, guarded, so that an apply of
        another `active` that read before this one fails its guard and checks again."""
        for name, rollout in after.rollouts.items():
            old = snap.state.rollouts.get(name)
            spec = rollout.spec
            if old is not None and (old.spec.upstream, old.spec.from_) == (spec.upstream,
                                                                           spec.from_):
                continue
            ukey = self.keys.resource("Upstream", spec.upstream)
            if ukey in snap.kvs:
                puts.setdefault(ukey, snap.kvs[ukey].value)
                expect.setdefault(ukey, snap.kvs[ukey].mod_revision)

    async def delete(self, kind: str, name: str, *, actor: str) -> Change:
        """Delete one resource (a Rollout's status goes with it).

        Errors:
            NotFoundError: no such resource.
            InvalidInputError: other resources still refer to it (each one listed).
            ConflictError: concurrent writers kept winning; delete again.
            StoreUnavailableError: etcd is down; nothing was written.
        """
        key = self.keys.resource(_known(kind), name)
        for attempt in range(CAS_ATTEMPTS):
            snap = await self._snapshot()
            old = snap.kvs.get(key)
            if old is None:
                raise NotFoundError(f"{kind}/{name} not found; nothing to delete")
            problems = _broken_by_delete(snap.state, kind, name)
            if problems:
                raise InvalidInputError(problems)
            resource = snap.state.get(kind, name)
            record = AuditRecord(actor=actor, action="delete", kind=kind, name=name,
                                 before=None if resource is None else to_document(resource))
            deletes = [key]
            if kind == "Rollout":
                deletes.append(self.keys.status(kind, name))
            revision = await self.commit(puts={}, deletes=deletes,
                                         expect={key: old.mod_revision}, audit=[record])
            if revision is not None:
                return Change(kind, name, "deleted")
            await _pause(attempt)
        raise ConflictError(f"{kind}/{name} kept changing; delete again")

    async def seal_clear_values(self, *, actor: str) -> builtins.list[str]:
        """Rewrite, sealed, every Credential whose inline value is stored in clear (by a
        version before values were sealed); one transaction, audited `store/seal`.
        Returns the names rewritten. Their clear revisions stay in etcd's history until
        `compact_history`.

        Errors:
            ControlPlaneError: there are such values and this store has no sealer.
            ConflictError: other writers kept winning.
        """
        for attempt in range(CAS_ATTEMPTS):
            got = await self._kv.range(self.keys.kind_prefix("Credential"))
            puts: dict[bytes, bytes] = {}
            expect: dict[bytes, int] = {}
            records: builtins.list[AuditRecord] = []
            for kv in got.kvs:
                if not is_clear(kv.value):
                    continue
                puts[kv.key] = seal_stored(kv.value, self._sealer)
                expect[kv.key] = kv.mod_revision
                records.append(AuditRecord(
                    actor=actor, action="store/seal", kind="Credential",
                    name=self.keys.parse_resource(kv.key)[1],
                    reason="its inline value was stored in clear; now sealed"))
            if not puts:
                return []
            if await self.commit(puts=puts, expect=expect, audit=records) is not None:
                return [r.name for r in records]
            await _pause(attempt)
        raise ConflictError("Credentials kept changing while sealing their values; restart")

    async def compact_history(self) -> int:
        """Drop etcd's history before now and defragment the connected member, so that
        values overwritten (e.g. by `seal_clear_values`) are gone from old revisions and
        from its db file. Watches resume by re-listing (see `watch_state`). Returns the
        revision compacted at."""
        revision = (await self._kv.range(self.keys.audit_head)).revision
        await self._kv.compact(revision)
        await self._kv.defragment()
        return revision

    async def commit_noted(self, puts: Mapping[bytes, bytes], expect: Mapping[bytes, int],
                           deletes: Sequence[bytes], notes: Sequence[Noted]) -> bool:
        """The vault's writes (its `Committer`): one compare-and-swap transaction with an
        audit entry per note; false when a guard failed."""
        records = [AuditRecord(actor=n.actor, action=n.action, kind=n.kind, name=n.name,
                               reason=n.reason, after=n.after) for n in notes]
        return await self.commit(puts=puts, expect=expect, deletes=deletes,
                                 audit=records) is not None

    async def commit(
        self,
        *,
        puts: Mapping[bytes, bytes],
        expect: Mapping[bytes, int],
        audit: Sequence[AuditRecord],
        deletes: Sequence[bytes] = (),
        lease: int | None = None,
        expect_values: Mapping[bytes, bytes] | None = None,
        leased: Sequence[bytes] = (),
    ) -> int | None:
        """Write `puts`/`deletes` and append `audit`, in one transaction.

        The building block of every mutation (apply, delete, rollout status).

        Args:
            expect: key → mod revision as read (0: the key must not exist).
            expect_values: key → value it must hold (e.g. the leader key: fencing).
            lease: a fencing lease: the write lands only while this lease is alive (a
                marker key `Keys.fence(lease)` is written under it). The written keys
                themselves are not attached to it: they outlive it.
            leased: keys of `puts` that are attached to `lease` all the same: etcd
                deletes them when it ends (a registration's key).

        Returns:
            The revision written at, or None when a guard in `expect`/`expect_values`
            failed or the lease expired: re-read and decide again. A moved audit head
            (someone else's write) is not a failure: the entries are re-chained and the
            write retried.

        Errors:
            ConflictError: the audit head kept moving, or is unreadable.
            StoreUnavailableError: etcd is down; nothing was written.
        """
        for _ in range(HEAD_ATTEMPTS):
            guards = dict(expect)
            all_puts = dict(puts)
            if audit:
                head_kv = await self._kv.get(self.keys.audit_head)
                head = _head(head_kv)
                entries, new_head = chain_entries(audit, head=head, time=time.time(),
                                                  key=self._audit_key)
                for entry in entries:
                    all_puts[self.keys.audit_entry(entry.seq)] = entry.to_json()
                all_puts[self.keys.audit_head] = new_head.to_json()
                guards[self.keys.audit_head] = 0 if head_kv is None else head_kv.mod_revision
            if lease is not None:
                all_puts[self.keys.fence(lease)] = b""
            result = await self._kv.txn(
                expect=guards, puts=all_puts, deletes=deletes, lease=lease,
                leased=[self.keys.fence(lease), *leased] if lease is not None else [],
                expect_values=expect_values,
            )
            if result:
                if audit and self._anchor is not None:
                    await self._follow_anchor(self._anchor, new_head, via=head)
                return result.revision
            if result.lease_expired or not _only_head_moved(result, expect,
                                                            expect_values or {}):
                return None
        raise ConflictError("the audit log kept moving under this write; retry")

    async def _follow_anchor(self, anchor: AuditAnchor, head: AuditHead, *,
                             via: AuditHead) -> None:
        # The write has landed: whatever happens to the anchor, commit reports success.
        try:
            await anchor.follow(self._kv, self.keys, head, via=via, behind_ok=True)
        except StoreUnavailableError as exc:
            log.warning("the audit anchor stays at entry %d for now (%s); the next write "
                        "or verify moves it", anchor.head.seq, exc)

    # ---- audit ----------------------------------------------------------------------------

    async def audit(self, *, since: float | None = None) -> builtins.list[AuditEntry]:
        """Audit entries, oldest first; `since`: only those at or after (seconds since the
        epoch). Unreadable entries are skipped here; `verify_audit` reports them."""
        return await read_audit(self._kv, self.keys, since=since)

    async def verify_audit(self) -> builtins.list[str]:
        """Problems in the chain (edited, deleted, forged or unreadable entries, a head that
        disagrees, a log truncated or wiped behind this replica's anchor); empty when
        intact, and then the anchor moves up to the head."""
        anchor = self._anchor
        problems, head = await verify_audit(
            self._kv, self.keys, key=self._audit_key,
            anchor=None if anchor is None else anchor.head,
            anchored_in="" if anchor is None else str(anchor.path))
        if anchor is not None and anchor.problem:
            problems.append(anchor.problem)
        if anchor is not None and not problems:
            anchor.advance(head)
        return problems

    async def export_audit(self) -> dict[str, object]:
        """The whole log as one document to verify offline (`audit --verify --file`):
        every entry, the head and this replica's anchor."""
        anchor = self._anchor
        return await export_audit(self._kv, self.keys,
                                  anchor=None if anchor is None else anchor.head,
                                  anchored_in="" if anchor is None else str(anchor.path))

    # ---- watch ----------------------------------------------------------------------------

    def watch_state(self) -> AsyncGenerator[tuple[DesiredState, int], None]:
        """The state now, then again after every change, for as long as it is iterated.

        Survives etcd restarts (resumes from the last revision seen) and compaction
        (re-reads). Each state is one consistent read: a multi-key change is seen whole.
        See `controlplane.store.watch`.
        """
        return watch_state(self._kv, self.keys, self.load)


def _too_large(exc: RequestTooLargeError, puts: Mapping[bytes, bytes]) -> RequestTooLargeError:
    """The same error, naming the largest resource written (each is written twice: as
    itself and as its audit entry's `after`)."""
    key, value = max(puts.items(), key=lambda kv: len(kv[1]))
    kind, _, name = key.decode().rpartition("/resources/")[2].partition("/")
    return RequestTooLargeError(
        f"{kind}/{name}", size=exc.size, limit=exc.limit,
        detail=f": the resource is {len(value)} bytes, written with its audit entry")


def _known(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidInputError([FieldError(
            "kind", f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")])
    return kind


def _check_unique(resources: Sequence[Resource]) -> None:
    seen: set[tuple[str, str]] = set()
    errors: builtins.list[FieldError] = []
    for resource in resources:
        ref = (resource.kind, resource.name)
        if ref in seen:
            errors.append(FieldError(f"{resource.kind}/{resource.name}",
                                     "appears twice in the input"))
        seen.add(ref)
    if errors:
        raise InvalidInputError(errors)


def _broken_by_delete(state: DesiredState, kind: str, name: str) -> builtins.list[FieldError]:
    """The problems deleting `kind/name` would add (not those the state already has)."""
    already = set(state.problems())
    errors = []
    for problem in state.without(kind, name).problems():
        if problem in already:
            continue
        owner = problem.location.split(":")[0]
        errors.append(FieldError(
            problem.location,
            f"refers to {kind}/{name}; change or delete {owner} first",
        ))
    return errors


def _superseded_record(
    actor: str, name: str, before: RolloutStatus, after: RolloutStatus
) -> AuditRecord:
    def summary(status: RolloutStatus) -> dict[str, object]:
        return {"phase": str(status.phase), "fromRetained": status.from_retained,
                "activeChangedBy": status.active_changed_by}
    return AuditRecord(actor=actor, action="apply/superseded", kind="Rollout", name=name,
                       reason=after.reason, before=summary(before), after=summary(after))


def _head(head_kv: KV | None) -> AuditHead:
    if head_kv is None:
        return AuditHead()
    try:
        return AuditHead.from_json(head_kv.value)
    except ValueError as exc:
        raise ConflictError(
            f"the audit head {head_kv.key.decode()} is unreadable ({exc}): writes are "
            "refused until it is repaired; `controlplane audit --verify` shows the chain"
        ) from exc


async def _ends_keyed(kv: EtcdKV, last_key: bytes) -> bool:
    """Whether the log's last entry is keyed (an unreadable or missing one counts as
    keyed: not ours to seal over; `verify_audit` reports it)."""
    got = await kv.get(last_key)
    try:
        return got is None or AuditEntry.from_json(got.value).keyed
    except (ValueError, TypeError):
        return True


def _only_head_moved(
    result: TxnResult, expect: Mapping[bytes, int], expect_values: Mapping[bytes, bytes]
) -> bool:
    for key, revision in expect.items():
        now = result.current.get(key)
        if (0 if now is None else now.mod_revision) != revision:
            return False
    for key, value in expect_values.items():
        now = result.current.get(key)
        if now is None or now.value != value:
            return False
    return True


async def _pause(attempt: int) -> None:
    # Spread retrying writers apart so one of them gets through.
    await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
