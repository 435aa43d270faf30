"""Everything the demo runs, started in order and stopped in reverse (also on Ctrl-C).

    async with World.running(workdir) as world:
        world.admin, world.edge_port, world.upstreams["v2"], ...

Embedded etcd and the control plane run in this process (ControlPlane.running); the
edge and sidecar Envoys are child processes bootstrapped like `controlplane bootstrap`
would (Envoy dies with us: PR_SET_PDEATHSIG, and we stop it by PID first); the payments
upstreams v1, v2 and a faulty v3 are asyncio servers here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from controlplane.demo.admin import AdminClient
from controlplane.demo.upstream import DemoUpstream
from controlplane.server import ControlPlane, ServeConfig
from controlplane.store.embedded import _DIE_WITH_PARENT
from controlplane.translate.bootstrap import bootstrap

KEY_HEADER = "x-api-key"
V3_ERROR_RATIO = 0.3
FIRST_ANSWER_S = 30.0

RESOURCES = """
apiVersion: controlplane/v1
kind: ProxyGroup
metadata: {{name: edge}}
spec: {{edge: true, description: "edge proxies: the public entry"}}
---
apiVersion: controlplane/v1
kind: ProxyGroup
metadata: {{name: sidecar}}
spec: {{description: "the payments client's sidecar (outbound)"}}
---
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-http}}
spec: {{group: edge, port: {edge_port}, address: 127.0.0.1}}
---
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: sidecar-outbound}}
spec: {{group: sidecar, port: {sidecar_port}, address: 127.0.0.1}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: payments}}
spec: {{listener: edge-http, upstream: payments}}
---
apiVersion: controlplane/v1
kind: Route
metadata: {{name: payments-sidecar}}
spec: {{listener: sidecar-outbound, upstream: payments}}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {{name: payments}}
spec:
  active: v1
  versions:
    v1: {{endpoints: ["127.0.0.1:{v1}"], credential: payments-v1-key}}
    v2: {{endpoints: ["127.0.0.1:{v2}"], credential: payments-v2-key}}
    v3: {{endpoints: ["127.0.0.1:{v3}"], credential: payments-v3-key}}
  healthCheck: {{path: /healthz, interval: 1s}}
  circuitBreakers: {{maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024}}
  retries: {{attempts: 1, on: "reset,connect-failure"}}
  timeout: 2s
"""

CREDENTIAL = """
---
apiVersion: controlplane/v1
kind: Credential
metadata: {{name: payments-{version}-key}}
spec: {{header: {header}, valueFrom: {{file: "{file}"}}}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Envoy:
    """One Envoy child process."""

    name: str
    proc: subprocess.Popen[bytes]
    admin_port: int
    config: Path
    log: Path

    async def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)


@dataclass
class World:
    """The running demo environment."""

    workdir: Path
    cp: ControlPlane
    admin: AdminClient
    upstreams: dict[str, DemoUpstream]
    key_files: dict[str, Path]
    edge_port: int
    sidecar_port: int
    envoys: list[Envoy] = field(default_factory=list)

    @property
    def admin_addr(self) -> str:
        return f"127.0.0.1:{self.cp.admin_port}"

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, workdir: Path) -> AsyncIterator[World]:
        async with contextlib.AsyncExitStack() as stack:
            keys = workdir / "keys"
            keys.mkdir(parents=True)
            key_files, upstreams = {}, {}
            for version in ("v1", "v2", "v3"):
                value = f"{version}-{secrets.token_hex(8)}"
                key_files[version] = keys / f"payments-{version}"
                key_files[version].write_text(value + "\n")
                key_files[version].chmod(0o600)
                app = DemoUpstream(version, header=KEY_HEADER, keys={value},
                                   error_ratio=V3_ERROR_RATIO if version == "v3" else 0.0)
                upstreams[version] = await app.start()
                stack.push_async_callback(app.stop)
            config = ServeConfig(data_dir=workdir / "data", xds_addr="127.0.0.1:0",
                                 admin_addr="127.0.0.1:0", metrics_addr=None,
                                 credentials_dirs=(keys,))
            cp = await stack.enter_async_context(ControlPlane.running(config))
            admin = AdminClient(f"127.0.0.1:{cp.admin_port}")
            stack.push_async_callback(admin.close)
            world = cls(workdir, cp, admin, upstreams, key_files,
                        edge_port=free_port(), sidecar_port=free_port())
            await world.apply_resources()
            for index, (node, group) in enumerate((("edge-1", "edge"),
                                                   ("sidecar-1", "sidecar"))):
                envoy = world._start_envoy(node, group, index)
                world.envoys.append(envoy)
                stack.push_async_callback(envoy.stop)
            yield world

    async def apply_resources(self, timeout: float = 10.0) -> None:
        """The Credentials first, and the rest once the control plane loaded their values
        (a `credential/load` audit entry each): routes to versions whose credential has no
        value yet would not translate (the groups would keep their last good config)."""
        credentials = "".join(
            CREDENTIAL.format(version=version, header=KEY_HEADER, file=path)
            for version, path in self.key_files.items())
        await self.admin.apply(credentials)
        async with asyncio.timeout(timeout):
            while True:
                loaded = {e["name"] for e in await self.admin.audit()
                          if e["action"] == "credential/load"}
                if loaded >= {f"payments-{v}-key" for v in self.key_files}:
                    break
                await asyncio.sleep(0.05)
        await self.admin.apply(RESOURCES.format(
            edge_port=self.edge_port, sidecar_port=self.sidecar_port,
            **{v: app.port for v, app in self.upstreams.items()}))

    def _start_envoy(self, node: str, group: str, index: int) -> Envoy:
        admin_port = free_port()
        config = bootstrap(node_id=node, group=group, xds_host="127.0.0.1",
                           xds_port=self.cp.xds_port, admin_port=admin_port,
                           edge=group == "edge")
        path = self.workdir / f"{node}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = self.workdir / f"{node}.log"
        binary = Path(sys.executable).with_name("envoy")
        envoy = str(binary) if binary.exists() else shutil.which("envoy") or "envoy"
        base_id = 20_000 + (os.getpid() % 10_000) * 4 + index
        # Envoy started with --disable-hot-restart does not set PR_SET_PDEATHSIG itself:
        # the launcher etcd uses sets it, so even our SIGKILL leaves no Envoy behind.
        proc = subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), envoy,
             "-c", str(path), "--base-id", str(base_id), "--log-path", str(log),
             "--concurrency", "1", "--disable-hot-restart"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C reaches only us; we stop Envoy by PID
        )
        return Envoy(node, proc, admin_port, path, log)

    async def wait_until_serving(self, timeout: float = FIRST_ANSWER_S) -> None:
        """Until both proxies answer through v1 (they connected, got config, warmed).

        Errors:
            TimeoutError: a proxy did not answer in time (its log is in the workdir).
        """
        async def answered(port: int) -> bool:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            try:
                writer.write(b"GET /ready HTTP/1.1\r\nhost: payments\r\n"
                             b"connection: close\r\n\r\n")
                raw = await asyncio.wait_for(reader.read(), 2)
            except (OSError, TimeoutError):
                return False
            finally:
                writer.close()
            return raw.startswith(b"HTTP/1.1 200") and b"x-upstream-version: v1" in raw

        async def ready(port: int) -> None:
            while not await answered(port):
                for envoy in self.envoys:
                    if envoy.proc.poll() is not None:
                        raise RuntimeError(f"Envoy {envoy.name} exited "
                                           f"({envoy.proc.returncode}); see {envoy.log}")
                await asyncio.sleep(0.1)

        async with asyncio.timeout(timeout):
            await asyncio.gather(ready(self.edge_port), ready(self.sidecar_port))
