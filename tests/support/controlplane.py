"""Run the real `controlplane` command in tests: `serve` as a process, the CLI as commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controlplane.store import EmbeddedEtcd
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]


_TLS_DIRS: dict[str, str] = {}
"""Admin address → the `--tls-dir` of the `serve` behind it (its admin port needs mTLS)."""


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def cli(args: Sequence[str], *, server: str | None = None, stdin: str | None = None,
        timeout: float = 30.0, env: dict[str, str] | None = None) -> CliResult:
    """Run `controlplane ARGS` (as `python -m controlplane`) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    if server:
        full_env["CONTROLPLANE_SERVER"] = server
        if server in _TLS_DIRS and "CONTROLPLANE_TLS_DIR" not in (env or {}):
            # What a user of `serve --tls-dir` does on that host: the admin certificate
            # serve wrote there (client.crt/.key) for every command.
            full_env["CONTROLPLANE_TLS_DIR"] = _TLS_DIRS[server]
    proc = subprocess.run(
        [sys.executable, "-m", "controlplane", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def envoy_bootstrap(node_id: str, group: str, xds: str, *, delta: bool = False
                    ) -> dict[str, Any]:
    """What `controlplane bootstrap` prints for one proxy of `group` whose control plane
    is at `xds` (HOST:PORT), run as a user runs it, with a free admin port; parsed."""
    args = ["bootstrap", "--node-id", node_id, "--group", group,
            "--admin-port", str(free_port()), "--xds-addr", xds]
    result = cli([*args, "--delta"] if delta else args)
    assert result.code == 0, result.err
    config: dict[str, Any] = yaml.safe_load(result.out)
    return config


class _PortTaken(RuntimeError):
    """`serve` exited because a port picked for it was taken before it bound it."""


@dataclass
class ServeProcess:
    """`controlplane serve` on free loopback ports, stopped by PID."""

    data_dir: Path
    etcd: EmbeddedEtcd | str | None = None
    """An etcd apart from this serve (its TLS flags given too), or a plaintext endpoint."""
    xds_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    @property
    def xds(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    def start(self, timeout: float = 30.0) -> ServeProcess:
        """Start and wait until the admin API answers.

        Ports are picked free but bound later, so another process (the embedded
        etcd picking its own) can take one in between: on the first start only,
        that one case is retried with fresh ports. Restarts keep their ports, as
        the Envoys a test started point at them.
        """
        first = self.proc is None
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if not first or attempt == 2:
                    raise
                self.xds_port, self.admin_port, self.metrics_port = (
                    free_port(), free_port(), free_port())
        raise AssertionError("unreachable")

    @property
    def tls_dir(self) -> str | None:
        args = list(self.extra_args)
        return args[args.index("--tls-dir") + 1] if "--tls-dir" in args else None

    def _start_once(self, timeout: float) -> ServeProcess:
        if self.tls_dir is not None:
            _TLS_DIRS[self.admin] = self.tls_dir
        else:  # a port an earlier TLS serve of this test run had is plaintext now
            _TLS_DIRS.pop(self.admin, None)
        args = [
            sys.executable, "-m", "controlplane", "serve",
            "--data-dir", str(self.data_dir),
            "--xds-addr", self.xds, "--admin-addr", self.admin,
            "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
        ]
        if isinstance(self.etcd, EmbeddedEtcd):  # as an external etcd, with its TLS
            tls = self.etcd.tls
            args += ["--etcd", self.etcd.endpoint, "--etcd-ca", str(tls.ca),
                     "--etcd-cert", str(tls.cert), "--etcd-key", str(tls.key)]
        elif self.etcd:
            args += ["--etcd", self.etcd]
        args += list(self.extra_args)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"serve-{self.xds_port}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + timeout
        last_err = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                if "Address already in use" in log:
                    raise _PortTaken(log)
                raise RuntimeError(f"controlplane serve exited: {log}")
            try:
                last = cli(["get", "upstreams"], server=self.admin, timeout=10)
            except subprocess.TimeoutExpired:  # a loaded machine: ask again, to the deadline
                last_err = "(`get upstreams` took over 10 s)"
                continue
            except BaseException:
                self.stop()  # never left running behind a failed start
                raise
            if last.code == 0:
                return self
            last_err = last.err
            time.sleep(0.1)
        self.stop()  # not left running behind a failed start
        raise TimeoutError(f"controlplane serve not ready in {timeout}s: {self.log()}\n"
                           f"the last `get upstreams` said: {last_err[-500:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    def kill(self) -> None:
        """SIGKILL: no clean-up runs, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
