"""Who is calling the admin API, and what their role lets them do.

Roles (DESIGN.md): viewer (get, status, audit) < operator (rollout verbs, rotate)
< admin (apply, delete). Every mutation is audited with the principal's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import grpc

from controlplane.errors import PermissionDeniedError


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


@dataclass(frozen=True)
class Principal:
    """An authenticated caller; `name` goes into the audit log."""

    name: str
    role: Role

    def require(self, role: Role, action: str) -> None:
        """Errors:
        PermissionDeniedError: the principal's role is below `role`.
        """
        if self.role < role:
            raise PermissionDeniedError(
                f"{self.name} has role {self.role.name.lower()}; {action} needs "
                f"{role.name.lower()}: ask an admin for a token with that role"
            )


class Authenticator(Protocol):
    """Turns a call's credentials into a principal, or raises AuthenticationError."""

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal: ...


class LocalAuthenticator:
    """No credentials configured: the server listens on loopback only, and every local
    caller acts as admin, named after its peer address in the audit log."""

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        return Principal(name=f"local:{context.peer()}", role=Role.ADMIN)
