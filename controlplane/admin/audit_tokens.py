"""The audit log (list, verify) and bearer tokens (create, list, revoke) on the admin API."""

from __future__ import annotations

import json

import grpc

from controlplane.admin.auth import CertificateAuthenticator, Role, TokenAuthenticator
from controlplane.admin.base import AdminBase
from controlplane.api import admin_pb2
from controlplane.errors import ConflictError
from controlplane.store.tokens import TokenStore


class AuditTokenMethods(AdminBase):
    """Mixed into AdminService: the audit log and bearer tokens."""

    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAuditResponse:
        async def run(actor: str) -> admin_pb2.ListAuditResponse:
            try:
                entries = await self._store.audit(since=request.since or None)
            except (ValueError, TypeError) as exc:  # an entry edited into garbage
                raise ConflictError(
                    f"the audit log holds an unreadable entry ({exc}); "
                    "`controlplane audit --verify` lists the damage"
                ) from exc
            return admin_pb2.ListAuditResponse(entries=[e.to_json().decode() for e in entries])

        return await self._guard(context, Role.VIEWER, "audit", run)

    async def VerifyAudit(
        self, request: admin_pb2.VerifyAuditRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.VerifyAuditResponse:
        async def run(actor: str) -> admin_pb2.VerifyAuditResponse:
            count = len((await self._store.kv.range(self._store.keys.audit)).kvs)
            problems = await self._store.verify_audit()
            return admin_pb2.VerifyAuditResponse(problems=problems, entries=count)

        return await self._guard(context, Role.VIEWER, "audit --verify", run)

    async def ExportAudit(
        self, request: admin_pb2.ExportAuditRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ExportAuditResponse:
        async def run(actor: str) -> admin_pb2.ExportAuditResponse:
            document = await self._store.export_audit()
            return admin_pb2.ExportAuditResponse(document=json.dumps(document))

        return await self._guard(context, Role.VIEWER, "audit --export", run)

    async def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateTokenResponse:
        async def run(actor: str) -> admin_pb2.CreateTokenResponse:
            token, record = await TokenStore(self._store).create(
                role=request.role.lower(), name=request.name, actor=actor
            )
            if isinstance(self._auth, TokenAuthenticator | CertificateAuthenticator):
                self._auth.remember(token, record)  # valid on this replica at once
            return admin_pb2.CreateTokenResponse(token=token, name=record.name, role=record.role)

        return await self._guard(context, Role.ADMIN, "token create", run)

    async def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTokensResponse:
        async def run(actor: str) -> admin_pb2.ListTokensResponse:
            return admin_pb2.ListTokensResponse(tokens=[
                admin_pb2.TokenInfo(name=r.name, role=r.role, created=r.created)
                for r in await TokenStore(self._store).list()])

        return await self._guard(context, Role.ADMIN, "token list", run)

    async def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeTokenResponse:
        async def run(actor: str) -> admin_pb2.RevokeTokenResponse:
            record, digests = await TokenStore(self._store).revoke(request.name, actor=actor)
            if isinstance(self._auth, TokenAuthenticator | CertificateAuthenticator):
                self._auth.forget(digests)  # refused on this replica at once
            return admin_pb2.RevokeTokenResponse(name=record.name, role=record.role)

        return await self._guard(context, Role.ADMIN, "token revoke", run)
