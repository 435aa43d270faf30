"""`controlplane cert revoke --serial S` under `serve --tls-dir`: a revoked user
certificate gets no admin call through, a revoked proxy certificate no xDS stream, and
the stream it already had is ended. Real serve, real etcd, real TLS."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane.store import EmbeddedEtcd
from controlplane.xds.resources import CLUSTER
from tests.e2e.test_backbone import edge_yaml
from tests.support.controlplane import ServeProcess, cli

pytestmark = pytest.mark.e2e


def issue(cp: ServeProcess, out: Path, *who: str) -> str:
    issued = cli(["cert", "issue", *who, "--out", str(out)], server=cp.admin)
    assert issued.code == 0, issued.err
    match = re.search(r"serial ([0-9a-f]+)", issued.out)
    assert match, issued.out
    return match.group(1)


@pytest.fixture
def cp(tmp_path: Path) -> Any:
    serve = ServeProcess(tmp_path / "cp", extra_args=("--tls-dir", str(tmp_path / "tls")))
    serve.start()
    try:
        assert cli(["apply", "-f", "-"], server=serve.admin,
                   stdin=edge_yaml(port=10000, v1=9001, v2=9002)).code == 0
        yield serve
    finally:
        serve.stop()


def test_a_revoked_user_certificate_gets_no_call_through(cp: ServeProcess,
                                                          tmp_path: Path) -> None:
    alice = tmp_path / "alice"
    serial = issue(cp, alice, "--user", "alice", "--role", "viewer")
    as_alice = {"CONTROLPLANE_TLS_DIR": str(alice)}
    assert cli(["get", "upstreams"], server=cp.admin, env=as_alice).code == 0

    revoked = cli(["cert", "revoke", "--serial", serial, "--reason", "laptop lost"],
                  server=cp.admin)
    assert revoked.code == 0 and f"serial {serial} revoked" in revoked.out, revoked.err
    refused = cli(["get", "upstreams"], server=cp.admin, env=as_alice)
    assert refused.code == 1 and "revoked" in refused.err, refused.err
    again = cli(["cert", "revoke", "--serial", serial.upper()], server=cp.admin)
    assert again.code == 0 and "already revoked" in again.out

    bad = cli(["cert", "revoke", "--serial", "not-hex"], server=cp.admin)
    assert bad.code == 2 and "--serial" in bad.err, bad.err
    entries = json.loads(cli(["audit", "-o", "json"], server=cp.admin).out)
    revokes = [e for e in entries if e["action"] == "cert/revoke"]
    assert [(e["actor"], e["name"], e["reason"]) for e in revokes] == [
        ("cert:admin", serial, "laptop lost")]


def test_a_revoked_proxy_certificate_loses_its_stream_and_gets_no_new_one(
        cp: ServeProcess, tmp_path: Path) -> None:
    proxy = tmp_path / "proxy"
    serial = issue(cp, proxy, "--group", "edge")

    async def scenario() -> None:
        async with _channel(cp.xds, proxy) as channel:
            call = await _stream(channel)
            first = await asyncio.wait_for(call.read(), timeout=15)
            assert first.type_url == CLUSTER and first.resources
            revoked = await asyncio.to_thread(
                cli, ["cert", "revoke", "--serial", serial], server=cp.admin)
            assert revoked.code == 0, revoked.err
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(call.read(), timeout=15)  # no ACK sent: only the end
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "revoked" in (ended.value.details() or "")

            again = await _stream(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(again.read(), timeout=15)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(scenario())


def _channel(target: str, creds_dir: Path) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(
        root_certificates=(creds_dir / "ca.crt").read_bytes(),
        private_key=(creds_dir / "proxy.key").read_bytes(),
        certificate_chain=(creds_dir / "proxy.crt").read_bytes()))


async def _stream(channel: grpc.aio.Channel) -> Any:
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    request.node.id, request.node.cluster = "proxy-1", "edge"
    await call.write(request)
    return call


def test_another_replica_ends_the_stream_of_a_revoked_certificate(
        tmp_path: Path, etcd: EmbeddedEtcd) -> None:
    tls = tmp_path / "tls"
    a = ServeProcess(tmp_path / "a", etcd=etcd, extra_args=("--tls-dir", str(tls)))
    a.start()
    b = ServeProcess(tmp_path / "b", etcd=etcd, extra_args=("--tls-dir", str(tls)))
    try:
        # The replicas share etcd, the --tls-dir files and the key that seals the vault.
        shutil.copy(tmp_path / "a" / "secrets.key", tls / "secrets.key")
        b.start()
        assert cli(["apply", "-f", "-"], server=a.admin,
                   stdin=edge_yaml(port=10000, v1=9001, v2=9002)).code == 0
        proxy = tmp_path / "proxy"
        serial = issue(a, proxy, "--group", "edge")

        async def scenario() -> None:
            async with _channel(b.xds, proxy) as channel:
                call = await _stream(channel)
                assert (await asyncio.wait_for(call.read(), timeout=15)).resources
                revoked = await asyncio.to_thread(
                    cli, ["cert", "revoke", "--serial", serial], server=a.admin)
                assert revoked.code == 0, revoked.err
                with pytest.raises(grpc.aio.AioRpcError) as ended:  # b re-reads every 2 s
                    await asyncio.wait_for(call.read(), timeout=15)
                assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED

        asyncio.run(scenario())
    finally:
        if b.proc is not None:
            b.stop()
        a.stop()
