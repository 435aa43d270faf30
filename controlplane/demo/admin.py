"""The demo drives the control plane as any operator would: through its admin API.

An asyncio twin of the CLI's client (controlplane/cli/client.py) for the few calls the
demo makes; on loopback with no token yet, the caller acts as admin (bootstrap mode).
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from controlplane.api import admin_pb2, admin_pb2_grpc
from controlplane.model.documents import load_yaml_documents


class AdminClient:
    """Apply, rollout status, credential rotate and audit over one grpc.aio channel."""

    def __init__(self, server: str, timeout: float = 10.0) -> None:
        self.server = server
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(server)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def apply(self, text: str) -> list[str]:
        """`controlplane apply -f -` with `text`; returns "kind/name action" per change."""
        documents = [json.dumps(doc) for doc in load_yaml_documents(text)]
        response = await self._stub.Apply(admin_pb2.ApplyRequest(documents=documents),
                                          timeout=self.timeout)
        return [f"{c.kind.lower()}/{c.name} {c.action}" for c in response.changes]

    async def rollout_status(self, name: str) -> dict[str, Any]:
        """`controlplane rollout status NAME -o json`."""
        response = await self._stub.GetRolloutStatus(admin_pb2.RolloutRequest(name=name),
                                                     timeout=self.timeout)
        status: dict[str, Any] = json.loads(response.status)
        return status

    async def get(self, kind: str, name: str) -> dict[str, Any]:
        """`controlplane get KIND NAME -o json`."""
        response = await self._stub.Get(admin_pb2.GetRequest(kind=kind, name=name),
                                        timeout=self.timeout)
        document: dict[str, Any] = json.loads(response.documents[0])
        return document

    async def rotate_credential(self, name: str) -> int:
        """`controlplane credential rotate NAME`: re-reads its valueFrom file; the generation."""
        response = await self._stub.RotateCredential(
            admin_pb2.RotateCredentialRequest(name=name), timeout=self.timeout)
        return int(response.generation)

    async def audit(self) -> list[dict[str, Any]]:
        """`controlplane audit -o json`: every entry, oldest first."""
        response = await self._stub.ListAudit(admin_pb2.ListAuditRequest(),
                                              timeout=self.timeout)
        return [json.loads(entry) for entry in response.entries]

    async def verify_audit(self) -> list[str]:
        """`controlplane audit --verify`: problems in the hash chain (empty: intact)."""
        response = await self._stub.VerifyAudit(admin_pb2.VerifyAuditRequest(),
                                                timeout=self.timeout)
        return list(response.problems)
