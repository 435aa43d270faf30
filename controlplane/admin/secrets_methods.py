"""Rotation verbs on the admin API: `cert rotate [--ca]` and `credential rotate` (operator role).

The vault does the compare-and-swap writes and names the audit entries; this mixin
only checks roles and shapes responses. No response carries key material or values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc
from pydantic import SecretStr

from controlplane.admin.auth import Role
from controlplane.admin.base import AdminBase
from controlplane.api import admin_pb2
from controlplane.errors import ControlPlaneError, FieldError, InvalidInputError
from controlplane.spiffe import group_id, user_id

if TYPE_CHECKING:  # the vault pulls in cryptography: keep it out of every CLI start
    from controlplane.secrets import Vault


_GROUP = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# What a SPIFFE path segment can carry unescaped; 256 as the xDS port's bound on node.id.
_NODE_ID = re.compile(r"^[A-Za-z0-9._~:@-]{1,256}$")


def _rotated(done: Mapping[str, tuple[str, str]]) -> list[admin_pb2.RotatedCertificate]:
    return [admin_pb2.RotatedCertificate(group=g, old_serial=old, new_serial=new)
            for g, (old, new) in sorted(done.items())]


class SecretMethods(AdminBase):
    """Mixed into AdminService; the wiring attaches the vault with `attach_vault`."""

    _vault: Vault | None = None
    _server_ca = ""

    def attach_vault(self, vault: Vault) -> None:
        self._vault = vault

    def attach_server_ca(self, pem: str) -> None:
        """The CA of the server's own certificate (`serve --tls-dir`): issued bundles carry
        it beside the issuing CA, so their holders can verify the server after a CA
        rotation too."""
        self._server_ca = pem

    def _with_server_ca(self, response: admin_pb2.IssueProxyCertificateResponse
                        ) -> admin_pb2.IssueProxyCertificateResponse:
        if self._server_ca:
            from controlplane.secrets.server_trust import pem_bundle  # see TYPE_CHECKING

            response.ca_pem = pem_bundle(self._server_ca, response.ca_pem).decode()
        return response

    def _require_vault(self) -> Vault:
        if self._vault is None:
            raise ControlPlaneError("this server has no secrets vault configured")
        return self._vault

    async def RotateCertificates(
        self, request: admin_pb2.RotateCertificatesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RotateCertificatesResponse:
        async def run(actor: str) -> admin_pb2.RotateCertificatesResponse:
            vault = self._require_vault()
            state, _ = await self._store.load()
            if request.ca:
                if request.group:
                    raise InvalidInputError([FieldError(
                        "--group", "a CA rotation re-issues every group's certificate; "
                                   "drop --group")])
                rotation = await vault.rotate_ca(state, actor=actor)
                return admin_pb2.RotateCertificatesResponse(
                    certificates=_rotated(rotation.certificates),
                    previous_ca_serial=rotation.previous_serial, ca_serial=rotation.serial)
            groups = [request.group] if request.group else []
            done = await vault.rotate_certs(state, groups=groups, actor=actor)
            return admin_pb2.RotateCertificatesResponse(certificates=_rotated(done))

        return await self._guard(context, Role.OPERATOR, "cert rotate", run)

    async def RotateCredential(
        self, request: admin_pb2.RotateCredentialRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RotateCredentialResponse:
        async def run(actor: str) -> admin_pb2.RotateCredentialResponse:
            vault = self._require_vault()
            state, _ = await self._store.load()
            done = await vault.rotate_credential(
                state, request.name,
                value=SecretStr(request.value) if request.value else None,
                emergency=request.emergency, actor=actor,
            )
            return admin_pb2.RotateCredentialResponse(
                name=done.name, generation=done.generation,
                previous_generation=done.previous_generation, previous_revoked=done.revoked)

        return await self._guard(context, Role.OPERATOR, "credential rotate", run)

    async def IssueProxyCertificate(
        self, request: admin_pb2.IssueProxyCertificateRequest,
        context: grpc.aio.ServicerContext,
    ) -> admin_pb2.IssueProxyCertificateResponse:
        async def run(actor: str) -> admin_pb2.IssueProxyCertificateResponse:
            if request.user:
                return self._with_server_ca(
                    await _issue_user(self._require_vault(), request, actor))
            if not _GROUP.match(request.group):
                raise InvalidInputError([FieldError(
                    "--group", f"{request.group!r} is not a proxy group name (RFC 1123 label)")])
            if request.node_id and not _NODE_ID.match(request.node_id):
                raise InvalidInputError([FieldError(
                    "--node-id", f"{request.node_id[:64]!r} is not a node id for a certificate "
                    "(1-256 of letters, digits and . _ ~ : @ -)")])
            uri = group_id(request.group, request.node_id)
            ca_pem, issued = await self._require_vault().identity(request.group, actor=actor,
                                                                  uri=uri)
            return self._with_server_ca(admin_pb2.IssueProxyCertificateResponse(
                ca_pem=ca_pem, cert_pem=issued.cert_pem,
                key_pem=issued.key_pem.get_secret_value().decode(),
                serial=issued.serial, not_after=issued.not_after,
            ))

        return await self._guard(context, Role.ADMIN, "cert issue", run)

    async def RevokeCertificate(
        self, request: admin_pb2.RevokeCertificateRequest, context: grpc.aio.ServicerContext,
    ) -> admin_pb2.RevokeCertificateResponse:
        async def run(actor: str) -> admin_pb2.RevokeCertificateResponse:
            from controlplane.store.revocations import RevocationStore, RevokedSerials

            serial, already = await RevocationStore(self._store).revoke(
                request.serial, reason=request.reason, actor=actor)
            revoked = getattr(self._auth, "revoked", None)
            if isinstance(revoked, RevokedSerials):
                revoked.add(frozenset({serial}))  # this replica: refused, streams ended, now
            return admin_pb2.RevokeCertificateResponse(serial=serial, already=already)

        return await self._guard(context, Role.ADMIN, "cert revoke", run)


async def _issue_user(vault: Vault, request: admin_pb2.IssueProxyCertificateRequest,
                      actor: str) -> admin_pb2.IssueProxyCertificateResponse:
    """A client certificate for an admin API user, its role signed into it."""
    errors = []
    if not _GROUP.match(request.user):
        errors.append(FieldError("--user", f"{request.user!r} is not a user name "
                                           "(lowercase letters, digits, '-')"))
    if request.role not in ("viewer", "operator", "admin"):
        errors.append(FieldError("--role", f"{request.role!r} is not viewer, operator or admin"))
    if request.group:
        errors.append(FieldError("--group", "give --group or --user, not both"))
    if request.node_id:
        errors.append(FieldError("--node-id", "a node id goes with --group, not --user"))
    if errors:
        raise InvalidInputError(errors)
    ca_pem, issued = await vault.identity(request.user, actor=actor,
                                          uri=user_id(request.user, request.role))
    return admin_pb2.IssueProxyCertificateResponse(
        ca_pem=ca_pem, cert_pem=issued.cert_pem,
        key_pem=issued.key_pem.get_secret_value().decode(),
        serial=issued.serial, not_after=issued.not_after,
    )
