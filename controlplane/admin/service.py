"""The admin gRPC service: validated resources in, store writes out, audit by the store."""

from __future__ import annotations

import asyncio
import json

import grpc

from controlplane.admin.audit_tokens import AuditTokenMethods
from controlplane.admin.auth import Role
from controlplane.admin.base import AdminBase
from controlplane.admin.registrations import RegistrationMethods
from controlplane.admin.rollouts import RolloutMethods, status_document
from controlplane.admin.secrets_methods import SecretMethods
from controlplane.admin.traffic import traffic_in_force
from controlplane.api import admin_pb2, admin_pb2_grpc
from controlplane.discovery.report import endpoints_report
from controlplane.errors import FieldError, InvalidInputError
from controlplane.model import canonical_kind, to_document, validate_documents


class AdminService(
    SecretMethods, AuditTokenMethods, RolloutMethods, RegistrationMethods, AdminBase,
    admin_pb2_grpc.AdminServicer,  # type: ignore[misc]
):
    """controlplane.admin.v1.Admin: resources, proxies, rollouts, audit, tokens,
    endpoint registrations."""

    async def Apply(
        self, request: admin_pb2.ApplyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ApplyResponse:
        async def run(actor: str) -> admin_pb2.ApplyResponse:
            docs = [_json(text, i) for i, text in enumerate(request.documents)]
            resources = validate_documents(docs)
            if self._vault is not None:  # files only the server reads: only it can check
                self._vault.files.check(resources)
            result = await self._store.apply(resources, actor=actor, dry_run=request.dry_run)
            response = admin_pb2.ApplyResponse(
                changes=[
                    admin_pb2.Change(kind=c.kind, name=c.name, action=c.action)
                    for c in result.changes
                ],
                revision=result.revision,
            )
            if request.dry_run and self._xds_diff is not None:
                for group, diff in self._xds_diff(result.state_before, result.state_after).items():
                    response.xds_diff[group] = diff
            return response

        return await self._guard(context, Role.ADMIN, "apply", run)

    async def Get(
        self, request: admin_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetResponse:
        async def run(actor: str) -> admin_pb2.GetResponse:
            kind = canonical_kind(request.kind)
            if request.name:
                resources = [await self._store.get(kind, request.name)]
            else:
                resources = await self._store.list(kind)
            docs = [to_document(r) for r in resources]
            if kind == "Rollout" and docs:
                state, _ = await self._store.load()
                for doc in docs:
                    if doc["metadata"]["name"] in state.rollouts:
                        full = status_document(state, doc["metadata"]["name"])
                        doc["status"] = {k: full[k] for k in (
                            "phase", "step", "weight", "applied", "proxies", "reason", "message")}
            if kind == "Upstream" and docs:
                state, _ = await self._store.load()
                # Off the event loop: it translates every group (xDS shares this loop).
                in_force = await asyncio.to_thread(traffic_in_force, state)
                for doc in docs:
                    doc["status"] = {"traffic": in_force.get(doc["metadata"]["name"], [])}
            return admin_pb2.GetResponse(documents=[json.dumps(d) for d in docs])

        return await self._guard(context, Role.VIEWER, "get", run)

    async def Delete(
        self, request: admin_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DeleteResponse:
        async def run(actor: str) -> admin_pb2.DeleteResponse:
            change = await self._store.delete(
                canonical_kind(request.kind), request.name, actor=actor
            )
            return admin_pb2.DeleteResponse(
                change=admin_pb2.Change(kind=change.kind, name=change.name, action=change.action)
            )

        return await self._guard(context, Role.ADMIN, "delete", run)

    async def ListProxies(
        self, request: admin_pb2.ListProxiesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListProxiesResponse:
        async def run(actor: str) -> admin_pb2.ListProxiesResponse:
            return admin_pb2.ListProxiesResponse(proxies=list(self._proxies()))

        return await self._guard(context, Role.VIEWER, "get proxies", run)

    async def GetEndpoints(
        self, request: admin_pb2.GetEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetEndpointsResponse:
        async def run(actor: str) -> admin_pb2.GetEndpointsResponse:
            document = await endpoints_report(self._store, request.upstream)
            return admin_pb2.GetEndpointsResponse(document=json.dumps(document))

        return await self._guard(context, Role.VIEWER, "get endpoints", run)


def _json(text: str, index: int) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError([FieldError(f"document {index + 1}", f"not JSON: {exc}")]) from exc
