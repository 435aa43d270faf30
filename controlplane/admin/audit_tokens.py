"""Placeholder: ListAudit, VerifyAudit and CreateToken, filled in by the audit/token work."""

from __future__ import annotations

from controlplane.admin.base import AdminBase


class AuditTokenMethods(AdminBase):
    """Mixed into AdminService: the audit log and bearer tokens."""
