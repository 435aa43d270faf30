"""The admin API names the class of every refusal (`error-class` trailer) and the CLI maps
that class, not the message's text, to its exit code and message: the real admin
service on a grpc.aio server on port 0, a real etcd, the real `controlplane` command."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from controlplane.admin import AdminService
from controlplane.api import admin_pb2, admin_pb2_grpc
from controlplane.contract import ERROR_CLASS_KEY, FIELD_ERRORS_KEY
from controlplane.model import parse_yaml, to_document
from controlplane.store import EmbeddedEtcd, Store
from tests.support.controlplane import CliResult, cli

BAD_UPSTREAM = json.dumps({
    "apiVersion": "controlplane/v1", "kind": "Upstream", "metadata": {"name": "payments"},
    "spec": {"active": "v1", "versions": {"v1": {"endpoints": ["127.0.0.1:9001"]}},
             "timeout": "soon"},
})

ORPHAN_ROUTE = """
apiVersion: controlplane/v1
kind: Route
metadata: {name: orphan}
spec: {listener: nowhere, prefix: /, upstream: nobody}
"""


@dataclass
class Admin:
    etcd: EmbeddedEtcd
    stub: admin_pb2_grpc.AdminStub
    target: str

    async def cli(self, *args: str) -> CliResult:
        # In a thread: this event loop serves the admin API the command calls.
        return await asyncio.to_thread(cli, list(args), server=self.target)


@pytest.fixture
async def admin(etcd: EmbeddedEtcd, store: Store) -> AsyncIterator[Admin]:
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(store, proxies=list), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Admin(etcd, admin_pb2_grpc.AdminStub(channel), f"127.0.0.1:{port}")
    finally:
        await channel.close()
        await server.stop(None)


def trailer(error: grpc.aio.AioRpcError, key: str) -> list[str]:
    return [str(v) for k, v in error.trailing_metadata() or () if k == key]


async def test_each_refusal_names_its_class(admin: Admin) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await admin.stub.Get(admin_pb2.GetRequest(kind="Upstream", name="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailer(missing.value, ERROR_CLASS_KEY) == ["NotFoundError"]

    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await admin.stub.Apply(admin_pb2.ApplyRequest(documents=[BAD_UPSTREAM]))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer(invalid.value, ERROR_CLASS_KEY) == ["InvalidInputError"]
    assert [line.split(": ")[1] for line in trailer(invalid.value, FIELD_ERRORS_KEY)] == [
        "spec.timeout"]


async def test_the_cli_maps_each_class_to_its_exit_code_and_message(admin: Admin) -> None:
    missing = await admin.cli("get", "upstream", "nope")
    assert missing.code == 1, missing.err
    assert missing.err.startswith("error: not found: "), missing.err

    # Valid alone, so past the CLI's own checks: the server's refusal is what is mapped.
    path = Path(admin.etcd.data_dir).parent / "orphan.yaml"
    path.write_text(ORPHAN_ROUTE)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.stub.Apply(admin_pb2.ApplyRequest(
            documents=[json.dumps(to_document(r)) for r in parse_yaml(ORPHAN_ROUTE)]))
    lines = trailer(refused.value, FIELD_ERRORS_KEY)
    assert lines and trailer(refused.value, ERROR_CLASS_KEY) == ["InvalidInputError"]
    invalid = await admin.cli("apply", "-f", str(path))
    assert invalid.code == 2, invalid.err
    assert invalid.err.splitlines() == [f"error: {line}" for line in lines]


async def test_store_unavailable_is_said_by_the_server_and_mapped_by_type(
    admin: Admin,
) -> None:
    await admin.etcd.stop()
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await admin.stub.Get(admin_pb2.GetRequest(kind="Upstream"))
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert trailer(down.value, ERROR_CLASS_KEY) == ["StoreUnavailableError"]

    result = await admin.cli("get", "upstreams")
    assert result.code == 1, result.err
    # The server answered: the CLI prints its words, and does not claim that the
    # control plane itself cannot be reached (what a bare UNAVAILABLE means).
    assert result.err.splitlines() == [f"error: {down.value.details()}"], result.err
    assert "cannot reach the control plane" not in result.err
