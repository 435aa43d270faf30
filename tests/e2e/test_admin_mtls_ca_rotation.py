"""`serve --tls-dir` after `cert rotate --ca`: what is issued from the new CA still gets in
(admin API and xDS), and what was issued before still does too."""

from __future__ import annotations

import asyncio
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
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e


def test_certificates_issued_after_a_ca_rotation_are_accepted(tmp_path: Path) -> None:
    tls = tmp_path / "server-tls"
    cp = ServeProcess(tmp_path / "cp", extra_args=("--tls-dir", str(tls))).start()
    try:
        applied = cli(["apply", "-f", "-"], server=cp.admin,
                      stdin=edge_yaml(port=10000, v1=9001, v2=9002))
        assert applied.code == 0, applied.err
        before = tmp_path / "before"
        assert cli(["cert", "issue", "--user", "bob", "--role", "viewer", "--out",
                    str(before)], server=cp.admin).code == 0
        rotated = cli(["cert", "rotate", "--ca"], server=cp.admin)
        assert rotated.code == 0, rotated.err

        after = tmp_path / "after"
        issued = cli(["cert", "issue", "--user", "alice", "--role", "viewer", "--out",
                      str(after)], server=cp.admin)
        assert issued.code == 0, issued.err
        for holder in (after, before, tls):
            got = cli(["get", "upstreams"], server=cp.admin,
                      env={"CONTROLPLANE_TLS_DIR": str(holder)})
            assert got.code == 0 and "payments" in got.out, (holder.name, got.err)
    finally:
        cp.stop()


def test_a_proxy_certificate_issued_after_a_ca_rotation_opens_an_xds_stream(
        tmp_path: Path) -> None:
    tls = tmp_path / "server-tls"
    cp = ServeProcess(tmp_path / "cp", extra_args=("--tls-dir", str(tls))).start()
    try:
        assert cli(["apply", "-f", "-"], server=cp.admin,
                   stdin=edge_yaml(port=10000, v1=9001, v2=9002)).code == 0
        assert cli(["cert", "rotate", "--ca"], server=cp.admin).code == 0
        proxy = tmp_path / "proxy"
        issued = cli(["cert", "issue", "--group", "edge", "--out", str(proxy)],
                     server=cp.admin)
        assert issued.code == 0, issued.err
        response = asyncio.run(_first_cds(cp.xds, proxy))
        assert response.type_url == CLUSTER and response.resources
    finally:
        cp.stop()


async def _first_cds(target: str, creds_dir: Path) -> Any:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(creds_dir / "ca.crt").read_bytes(),
        private_key=(creds_dir / "proxy.key").read_bytes(),
        certificate_chain=(creds_dir / "proxy.crt").read_bytes())
    async with grpc.aio.secure_channel(target, creds) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        request.node.id, request.node.cluster = "proxy-1", "edge"
        await call.write(request)
        return await asyncio.wait_for(call.read(), timeout=15)


def test_the_other_replica_accepts_certificates_from_the_new_ca_too(
        tmp_path: Path, etcd: EmbeddedEtcd) -> None:
    tls = tmp_path / "tls"
    a = ServeProcess(tmp_path / "a", etcd=etcd, extra_args=("--tls-dir", str(tls)))
    a.start()
    b = ServeProcess(tmp_path / "b", etcd=etcd, extra_args=("--tls-dir", str(tls)))
    try:
        shutil.copy(tmp_path / "a" / "secrets.key", tls / "secrets.key")
        b.start()
        assert cli(["apply", "-f", "-"], server=a.admin,
                   stdin=edge_yaml(port=10000, v1=9001, v2=9002)).code == 0
        assert cli(["cert", "rotate", "--ca"], server=a.admin).code == 0
        after = tmp_path / "after"
        assert cli(["cert", "issue", "--user", "alice", "--role", "viewer", "--out",
                    str(after)], server=a.admin).code == 0
        as_alice = {"CONTROLPLANE_TLS_DIR": str(after)}
        wait_for_sync(lambda: cli(["get", "upstreams"], server=b.admin, env=as_alice).code == 0,
                      timeout=40, interval=0.5, message="replica b accepts the new CA's cert")
    finally:
        if b.proc is not None:
            b.stop()
        a.stop()
