"""One owner for an Upstream's `active`: the rules apply checks against the state before.

`active` is the user's (apply) except while a rollout of the upstream runs; then it is
the rollout's, and the engine writes it when the rollout ends. So:

    create a Rollout          its `from` must be the upstream's `active` (omitted: filled)
    rollout running           an apply may not change `active`, nor remove `from` or `to`
    rollout finished          an apply of a new `active` moves traffic at once: a
                              succeeded rollout's retained `from` is dropped and its
                              rollback refused (`supersede`, `rollback_refusal`)

Pure functions of the states before and after an apply; the store calls them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from controlplane.errors import FieldError
from controlplane.model.resources import Resource, Rollout
from controlplane.model.state import DesiredState
from controlplane.model.status import Phase, RolloutStatus


def with_from(before: DesiredState, resources: Sequence[Resource]) -> list[Resource]:
    """`resources` with every Rollout's omitted `from` filled in: the stored rollout's own
    (re-applying the same file changes nothing), else the upstream's `active` as this
    apply leaves it."""
    after = before.with_applied(r for r in resources if r.kind == "Upstream")
    out: list[Resource] = []
    for resource in resources:
        if isinstance(resource, Rollout) and not resource.spec.from_:
            stored = before.rollouts.get(resource.name)
            upstream = after.upstreams.get(resource.spec.upstream)
            source = (stored.spec.from_ if stored is not None
                      and stored.spec.upstream == resource.spec.upstream
                      else upstream.spec.active if upstream is not None else "")
            if source:
                resource = resource.model_copy(
                    update={"spec": resource.spec.model_copy(update={"from_": source})})
        out.append(resource)
    return out


def transition_problems(before: DesiredState, after: DesiredState) -> list[FieldError]:
    """What an apply from `before` to `after` breaks of the ownership of `active`.

    A rollout that is new (or now names another upstream or `from`) must start from the
    upstream's `active`; a rollout running in `before` keeps its upstream's `active` and
    both its versions.
    """
    errors: list[FieldError] = []
    for name, rollout in after.rollouts.items():
        spec, old = rollout.spec, before.rollouts.get(name)
        if old is not None and (old.spec.upstream, old.spec.from_) == (spec.upstream,
                                                                       spec.from_):
            continue
        upstream = after.upstreams.get(spec.upstream)
        if upstream is None or spec.from_ not in upstream.spec.versions:
            continue  # problems() names the missing upstream or version
        if spec.from_ != upstream.spec.active:
            errors.append(FieldError(
                f"Rollout/{name}: spec.from",
                f"{spec.from_!r} is not Upstream/{spec.upstream}'s active version "
                f"{upstream.spec.active!r}; a rollout moves traffic from the version that "
                "has it (omit from to mean active)",
            ))
    for name, rollout in before.rollouts.items():
        status, spec = before.status(name), rollout.spec
        was, new = before.upstreams.get(spec.upstream), after.upstreams.get(spec.upstream)
        if not status.active or was is None or new is None:
            continue
        verbs = (f"`controlplane rollout abort {name}` (traffic back to {spec.from_}) or "
                 f"`controlplane rollout promote {name}` (on to {spec.to}) first")
        if new.spec.active != was.spec.active:
            errors.append(FieldError(
                f"Upstream/{spec.upstream}: spec.active",
                f"Rollout/{name} is {status.phase} and owns the active version until it "
                f"finishes; {verbs}",
            ))
        removed = sorted({spec.from_, spec.to} - new.spec.versions.keys())
        if removed:
            errors.append(FieldError(
                f"Upstream/{spec.upstream}: spec.versions",
                f"{removed} are used by Rollout/{name}, which is {status.phase}; {verbs}",
            ))
    return errors


def supersede(
    before: DesiredState, after: DesiredState, *, actor: str, now: float
) -> Mapping[str, RolloutStatus]:
    """Rollout name → its new status, for every succeeded rollout that could still roll
    back and whose upstream's `active` this apply changes: the apply wins, so its retained
    `from` is dropped (traffic follows `active` at once) and its rollback is refused."""
    out: dict[str, RolloutStatus] = {}
    for name, rollout in after.rollouts.items():
        status, spec = after.status(name), rollout.spec
        old, new = before.upstreams.get(spec.upstream), after.upstreams.get(spec.upstream)
        if old is None or new is None or old.spec.active == new.spec.active:
            continue
        if status.phase != Phase.SUCCEEDED or status.active_changed_at is not None:
            continue
        window = spec.rollback_window.seconds
        in_window = status.finished_at is not None and now - status.finished_at <= window
        if status.from_retained or in_window:
            out[name] = replace(status, from_retained=False, active_changed_at=now,
                                active_changed_by=actor,
                                reason=f"Upstream/{spec.upstream} active set to "
                                       f"{new.spec.active!r} by apply")
    return out


def rollback_refusal(state: DesiredState, name: str) -> str | None:
    """Why rollout `name` may not roll back (None: it may, as far as ownership goes)."""
    status = state.status(name)
    if status.active_changed_at is None:
        return None
    spec = state.rollouts[name].spec
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(status.active_changed_at))
    return (f"Rollout/{name} cannot roll back: Upstream/{spec.upstream}'s active was changed "
            f"by apply at {at} by {status.active_changed_by or 'unknown'}; to go back, apply "
            f"`active: {spec.from_}` to Upstream/{spec.upstream} instead")
