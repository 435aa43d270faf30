"""Rollout status: what the control plane writes about a Rollout (like a Kubernetes
status subresource). It lives in etcd beside the spec, so every replica translates
the same weights and a restarted control plane resumes where it was."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from controlplane.contract import ACTIVE_PHASES, FINAL_PHASES, Phase

__all__ = ["ACTIVE_PHASES", "FINAL_PHASES", "Phase", "RolloutStatus"]


@dataclass(frozen=True)
class RolloutStatus:
    """One rollout's progress.

    Attributes:
        step: index into the rollout's steps (-1 before the first).
        weight: percent of the upstream's traffic on `to`.
        applied: every proxy that must carry this weight has ACKed it.
        since: when the phase, step or `applied` last changed (seconds since the epoch).
        message: details for people: a NACK's text, the failing analysis numbers.
        proxies_acked / proxies_total: the fleet's progress on the current config.
        last_check: the last analysis check of `to` (verdict, numbers and thresholds), as
            `controlplane.analysis.Check.document()` gives it.
        from_retained: after success, `from` stays configured (at 0%) until the rollback
            window ends, so a rollback is instant and keeps `from`'s account.
        active_changed_at / active_changed_by: after success, an apply changed the
            upstream's `active` (when, by whom): `active` is the user's again, so this
            rollout's rollback is refused (see `controlplane.model.ownership`).
    """

    phase: Phase = Phase.PENDING
    step: int = -1
    weight: float = 0.0
    applied: bool = False
    since: float = 0.0
    failed_checks: int = 0
    reason: str = ""
    message: str = ""
    finished_at: float | None = None
    proxies_acked: int = 0
    proxies_total: int = 0
    last_check: dict[str, Any] | None = None
    from_retained: bool = False
    active_changed_at: float | None = None
    active_changed_by: str = ""

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RolloutStatus:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["phase"] = Phase(data.get("phase", Phase.PENDING))
        return cls(**data)
