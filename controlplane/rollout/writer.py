"""Apply a rollout decision to etcd: one compare-and-swap transaction with its audit entry."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from controlplane.model import DesiredState, to_document, to_stored
from controlplane.model.status import Phase, RolloutStatus
from controlplane.rollout.machine import Decision
from controlplane.store import AuditRecord, Store
from controlplane.store.leader import NO_FENCE, Fence

log = logging.getLogger(__name__)


def engine_actor(replica: str) -> str:
    """The principal of the rollout engine's writes in the audit log."""
    return f"engine:{replica}"


def _summary(status: RolloutStatus) -> dict[str, object]:
    return {"phase": str(status.phase), "step": status.step, "weight": status.weight,
            "applied": status.applied}


async def write_status(
    store: Store,
    state: DesiredState,
    revisions: Mapping[bytes, int],
    name: str,
    status: RolloutStatus,
    *,
    actor: str,
    reason: str = "",
    audit: bool = True,
    fence: Fence = NO_FENCE,
) -> bool:
    """Write `status` for rollout `name` if nothing changed it since `revisions` were read.

    When the rollout enters Succeeded or RolledBack, the upstream's `active` follows in the
    same transaction (`to`, `from`), with its own audit entry (whatever `audit` says).
    Returns False when a guard failed (someone else wrote first, or this replica is no
    longer the leader).
    """
    keys = store.keys
    key = keys.status("Rollout", name)
    spec = state.rollouts[name].spec
    before = state.status(name)
    puts = {key: status.to_json()}
    expect = {key: revisions.get(key, 0)}
    # Only on the transition itself: a later write (counters, the window's end) must not
    # take back an `active` that apply has owned again since.
    target = None if status.phase == before.phase else {
        Phase.SUCCEEDED: spec.to, Phase.ROLLED_BACK: spec.from_}.get(status.phase)
    upstream = state.upstreams.get(spec.upstream)
    records = [AuditRecord(
        actor=actor, action=f"rollout/{status.phase}", kind="Rollout", name=name,
        reason=reason, before=_summary(before), after=_summary(status),
    )] if audit else []
    if target is not None and upstream is not None and upstream.spec.active != target:
        switched = upstream.model_copy(
            update={"spec": upstream.spec.model_copy(update={"active": target})}
        )
        ukey = keys.resource("Upstream", upstream.name)
        puts[ukey] = to_stored(switched)
        expect[ukey] = revisions.get(ukey, 0)
        # A change of `active` is a mutation of the Upstream: audited whatever `audit` says.
        records.append(AuditRecord(
            actor=actor, action="rollout/set-active", kind="Upstream", name=upstream.name,
            reason=f"Rollout/{name} {status.phase}",
            before=to_document(upstream), after=to_document(switched),
        ))
    # Fenced by comparing the leader key, not by attaching keys to the lease:
    # the status must outlive the leader that wrote it.
    revision = await store.commit(puts=puts, expect=expect, audit=records,
                                  expect_values=fence.values)
    return revision is not None


async def apply_decision(
    store: Store, state: DesiredState, revisions: Mapping[bytes, int], name: str,
    decision: Decision, *, actor: str, fence: Fence = NO_FENCE,
) -> bool:
    """Write a machine decision (a no-op decision writes nothing and succeeds).

    Each decision written is one log line, whoever decided it (the engine or an
    operator), with its fields for JSON logs: rollout, from, to, reason, step, weight,
    actor."""
    if decision.status is None:
        return True
    new, before = decision.status, state.status(name)
    written = await write_status(store, state, revisions, name, new, actor=actor,
                                 reason=decision.reason, audit=not decision.quiet, fence=fence)
    if written:
        log.info("rollout %s: %s → %s (%s)", name, before.phase, new.phase, decision.reason,
                 extra={"rollout": name, "from": str(before.phase), "to": str(new.phase),
                        "reason": decision.reason, "step": new.step, "weight": new.weight,
                        "actor": actor})
    return written
