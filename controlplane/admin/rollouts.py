"""Rollout status and operator verbs on the admin API.

A verb is a state-machine event written with compare-and-swap, like the engine's
own transitions, so an operator and the engine never overwrite each other.
"""

from __future__ import annotations

import json
import time
from typing import Any

import grpc

from controlplane.admin.auth import Role
from controlplane.admin.base import AdminBase
from controlplane.api import admin_pb2
from controlplane.errors import ConflictError, FieldError, InvalidInputError, NotFoundError
from controlplane.model import DesiredState
from controlplane.model.ownership import rollback_refusal
from controlplane.rollout.machine import VERBS, Decision, Operator, steps_of, transition
from controlplane.rollout.writer import apply_decision

CAS_ATTEMPTS = 5


def status_document(state: DesiredState, name: str) -> dict[str, Any]:
    """The stable `rollout status -o json` object."""
    spec = state.rollouts[name].spec
    status = state.status(name)
    return {
        "name": name,
        "upstream": spec.upstream,
        "from": spec.from_,
        "to": spec.to,
        "strategy": spec.strategy,
        "steps": steps_of(spec),
        "phase": str(status.phase),
        "step": status.step,
        "weight": status.weight,
        "applied": status.applied,
        "proxies": {"acked": status.proxies_acked, "total": status.proxies_total},
        "failedChecks": status.failed_checks,
        "reason": status.reason,
        "message": status.message,
        "since": status.since,
        "finishedAt": status.finished_at,
        "lastCheck": status.last_check,
        "fromRetained": status.from_retained,
        "activeChangedAt": status.active_changed_at,
        "activeChangedBy": status.active_changed_by,
    }


def _refuse_second_owner(state: DesiredState, name: str, decision: Decision) -> None:
    """A finished rollout rolled back within its window becomes active again: not while
    another rollout of the same upstream is running (one rollout per upstream)."""
    if decision.status is None or not decision.status.active or state.status(name).active:
        return
    upstream = state.rollouts[name].spec.upstream
    for other, rollout in state.rollouts.items():
        if other != name and rollout.spec.upstream == upstream and state.status(other).active:
            raise ConflictError(f"Rollout/{other} now manages Upstream/{upstream}; roll that "
                                f"one back (or abort it) instead of Rollout/{name}")


class RolloutMethods(AdminBase):
    """Mixed into AdminService."""

    async def _rollout_state(self, name: str) -> DesiredState:
        state, _ = await self._store.load()
        if name not in state.rollouts:
            raise NotFoundError(f"Rollout/{name} not found; `controlplane get rollouts` "
                                "lists what exists")
        return state

    async def GetRolloutStatus(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RolloutStatusResponse:
        async def run(actor: str) -> admin_pb2.RolloutStatusResponse:
            state = await self._rollout_state(request.name)
            return admin_pb2.RolloutStatusResponse(
                status=json.dumps(status_document(state, request.name))
            )

        return await self._guard(context, Role.VIEWER, "rollout status", run)

    async def RolloutAction(
        self, request: admin_pb2.RolloutActionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RolloutStatusResponse:
        async def run(actor: str) -> admin_pb2.RolloutStatusResponse:
            if request.verb not in VERBS:
                raise InvalidInputError([FieldError(
                    "verb", f"{request.verb!r} is not one of {sorted(VERBS)}")])
            for _ in range(CAS_ATTEMPTS):
                state, revisions, _ = await self._store.read()
                if request.name not in state.rollouts:
                    raise NotFoundError(f"Rollout/{request.name} not found")
                refusal = rollback_refusal(state, request.name)
                if request.verb == "rollback" and refusal is not None:
                    raise ConflictError(refusal)
                spec = state.rollouts[request.name].spec
                decision = transition(spec, state.status(request.name),
                                      Operator(time.time(), request.verb, actor))
                _refuse_second_owner(state, request.name, decision)
                written = await apply_decision(self._store, state, revisions, request.name,
                                               decision, actor=actor)
                if written:
                    if decision.status is not None:
                        state = state.with_status(request.name, decision.status)
                    return admin_pb2.RolloutStatusResponse(
                        status=json.dumps(status_document(state, request.name)),
                        result=decision.reason or "unchanged",
                    )
            raise ConflictError(f"Rollout/{request.name} kept changing; try again")

        return await self._guard(context, Role.OPERATOR, f"rollout {request.verb}", run)
