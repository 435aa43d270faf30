"""Leased endpoints end to end: one `serve`, one real Envoy, upstream instances on
127.0.0.2/.3/.4 at one port. Keys written with the real `etcdctl` (etcd's naming format,
`put --lease`) and `controlplane endpoint register` as a process decide which instances
get requests: added, expired, deregistered by SIGTERM (at once) or dropped by SIGKILL
(within the TTL), with 0 failed requests when one is added and when one is removed after
deregistration. Refusals: a version that did not opt in (exit 2), a viewer (exit 1), a
prefix into our own keys (exit 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from controlplane.store.etcd_pki import client_tls
from tests.e2e.test_backbone import edge_yaml
from tests.support.controlplane import REPO, ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.etcd_access import etcdctl, serve_endpoint
from tests.support.ports import free_port
from tests.support.served import Served
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

FIRST_CONFIG_S = 15.0  # Envoy start + first ADS exchange on a loaded 2-core machine
FOLLOW_S = 10.0  # a watch event, the leader's write, the state watch, the push, loaded
PREFIX = "services/payments/v1/"


def config(listener: int, port: int, v1: str) -> str:
    return edge_yaml(port=listener, versions=f"""    v1: {v1}
    v2: {{endpoints: ["127.0.0.9:{port}"]}}""")


class Etcd:
    """The real etcdctl against serve's embedded etcd, with its client pair."""

    def __init__(self, cp: ServeProcess) -> None:
        self._base = etcdctl(serve_endpoint(cp.data_dir), client_tls(cp.data_dir))

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self._base, *args], capture_output=True, text=True,
                              timeout=10, check=True)
        return done.stdout

    def put(self, key: str, address: str, lease: str | None = None) -> None:
        value = json.dumps({"Op": 0, "Addr": address, "Metadata": {"zone": "a"}})
        self("put", *([f"--lease={lease}"] if lease else []), PREFIX + key, value)

    def lease(self, ttl: int) -> str:
        return self("lease", "grant", str(ttl)).split()[1]  # "lease ID granted with TTL(3s)"


class Registration:
    """`controlplane endpoint register` as a process."""

    def __init__(self, cp: ServeProcess, version: str, address: str, ttl: str = "10s",
                 token: str | None = None) -> None:
        env = {**os.environ, "CONTROLPLANE_SERVER": cp.admin}
        if token:
            env["CONTROLPLANE_TOKEN"] = token
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "endpoint", "register", "--upstream",
             "payments", "--version", version, "--address", address, "--ttl", ttl],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self._ended: tuple[int, str, str] | None = None

    def stop(self, sig: signal.Signals) -> tuple[int, str, str]:
        """Send `sig` unless it has exited; its exit code and output."""
        if self._ended is None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            out, err = self.proc.communicate(timeout=10)
            self._ended = (self.proc.returncode, out, err)
        return self._ended


def test_leased_keys_and_registrations_decide_where_requests_go(
        serve: ServeProcess, upstream_factory: Callable[..., Upstream],
        envoy_factory: Callable[..., Envoy]) -> None:
    cp, etcd = serve, Etcd(serve)
    port = free_port("127.0.0.2")
    upstream_factory("a", host="127.0.0.2", port=port)
    b = upstream_factory("b", host="127.0.0.3", port=port)
    upstream_factory("c", host="127.0.0.4", port=port)
    listener = free_port()
    leased = "{endpointsFrom: {etcd: services/payments/v1, registered: true}}"
    result = cli(["apply", "-f", "-"], server=cp.admin, stdin=config(listener, port, leased))
    assert result.code == 0, result.err
    etcd.put("a", f"127.0.0.2:{port}")
    envoy_factory(cp, "edge-1", "edge")
    served = Served(listener)
    failures, only = served.failures, served.only

    wait_for_sync(only("a"), FIRST_CONFIG_S, message="a key in etcd's naming format")
    failures.clear()  # Envoy's first requests may race its first config

    registered = Registration(cp, "v1", f"127.0.0.3:{port}")
    try:
        wait_for_sync(lambda: served() == "b", FOLLOW_S, message="a registration added")
        assert {served() for _ in range(20)} == {"a", "b"}
        addresses = json.loads(cli(["get", "endpoints", "payments", "-o", "json"],
                                   server=cp.admin).out)["versions"][0]["addresses"]
        assert {a["source"].split(":")[0] for a in addresses} == {"etcd", "registered"}
        assert {"address": f"127.0.0.2:{port}", "source": f"etcd:{PREFIX}a"} in addresses

        etcd("put", PREFIX + "bad", "not the naming format")  # skipped, the watch goes on
        etcd.put("c", f"127.0.0.4:{port}", lease=etcd.lease(3))  # never kept alive
        wait_for_sync(lambda: served() == "c", FOLLOW_S, message="a key under a lease")
        wait_for_sync(only("a", "b"), 3 + FOLLOW_S, message="its lease expired")

        code, out, err = registered.stop(signal.SIGTERM)  # deregister first...
        assert code == 0 and f"registered 127.0.0.3:{port} in payments/v1" in out, err
        wait_for_sync(only("a"), FOLLOW_S, message="deregistered at once")
    finally:
        registered.stop(signal.SIGKILL)
    b.stop_thread()  # ...then stop the instance
    assert all(served() == "a" for _ in range(10))
    assert not failures, failures
    assert cp.log_path is not None
    log = cp.log_path.read_text(errors="replace")
    assert log.count(f"etcd key {PREFIX}bad skipped") == 1, cp.log()

    crashing = Registration(cp, "v1", f"127.0.0.4:{port}", ttl="3s")
    wait_for_sync(lambda: served() == "c", FOLLOW_S, message="registered again")
    crashing.stop(signal.SIGKILL)  # no word to the server: the lease goes within the TTL
    wait_for_sync(only("a"), 3 + FOLLOW_S, message="a crashed registrar's endpoint gone")

    refused = Registration(cp, "v2", f"127.0.0.4:{port}")  # v2 did not opt in
    refused.proc.wait(10)
    code, _, err = refused.stop(signal.SIGTERM)
    assert code == 2 and "spec.versions.v2.endpointsFrom" in err, err

    before = cli(["get", "upstreams", "-o", "json"], server=cp.admin).out
    ours = config(listener, port, "{endpointsFrom: {etcd: /controlplane/resources}}")
    result = cli(["apply", "-f", "-"], server=cp.admin, stdin=ours)
    assert result.code == 2 and "endpointsFrom.etcd" in result.err, result
    assert cli(["get", "upstreams", "-o", "json"], server=cp.admin).out == before

    admin = cli(["token", "create", "--role", "admin"], server=cp.admin).out.split()[-1]
    viewer = cli(["token", "create", "--role", "viewer"], server=cp.admin,
                 env={"CONTROLPLANE_TOKEN": admin}).out.split()[-1]
    looking = Registration(cp, "v1", f"127.0.0.4:{port}", token=viewer)
    looking.proc.wait(10)
    code, _, err = looking.stop(signal.SIGTERM)
    assert code == 1 and "operator" in err, err
