"""Rollout status and operator verbs on the admin API."""

from __future__ import annotations

from controlplane.admin.base import AdminBase


class RolloutMethods(AdminBase):
    """Mixed into AdminService."""
