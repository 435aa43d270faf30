"""Errors that point at the cause, through the real `controlplane` command against one
real `serve` (embedded etcd) shared by the module: a write over etcd's size limit, a
second serve on a data dir in use, `--server` without a port or at the xDS port,
`rollout status --watch` into a pipe, `--version`."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from controlplane.cli.client import with_default_port
from controlplane.errors import InvalidInputError
from controlplane.store.datadir import DataDirLock
from tests.support.controlplane import REPO, ServeProcess, cli


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("cp")).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_version_prints_the_package_version() -> None:
    result = cli(["--version"])
    assert result.code == 0, result.err
    assert result.out.strip() == f"controlplane {version('controlplane')}"


@pytest.mark.parametrize(("given", "target"), [
    pytest.param("cp.example", "cp.example:18001", id="host"),
    pytest.param("10.0.0.7", "10.0.0.7:18001", id="ipv4"),
    pytest.param("10.0.0.7:9000", "10.0.0.7:9000", id="host-port"),
    pytest.param("[::1]", "[::1]:18001", id="ipv6-brackets"),
    pytest.param("::1", "[::1]:18001", id="ipv6-bare"),
    pytest.param("[::1]:9000", "[::1]:9000", id="ipv6-port"),
    pytest.param("dns:///cp.example:9000", "dns:///cp.example:9000", id="grpc-uri"),
])
def test_a_server_without_a_port_means_the_admin_default(given: str, target: str) -> None:
    assert with_default_port(given) == target


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_cli_dials_port_18001_for_a_bare_host(how: str) -> None:
    # Nothing listens on 127.0.0.3: the refusal names the address the CLI dialled.
    if how == "flag":
        result = cli(["get", "upstreams", "--server", "127.0.0.3"])
    else:
        result = cli(["get", "upstreams"], env={"CONTROLPLANE_SERVER": "127.0.0.3"})
    assert result.code == 1, result.err
    assert "cannot reach the control plane at 127.0.0.3:18001" in result.err


def test_the_xds_port_given_as_server_is_named_as_such(serve: ServeProcess) -> None:
    result = cli(["get", "upstreams"], server=serve.xds)
    assert result.code == 2, (result.out, result.err)
    assert (f"--server: {serve.xds} is an xDS port, not the admin API (default "
            "127.0.0.1:18001; serve --admin-addr)") in result.err


def test_the_metrics_port_given_as_server_is_not_grpc(serve: ServeProcess) -> None:
    metrics = f"127.0.0.1:{serve.metrics_port}"
    result = cli(["get", "upstreams"], server=metrics)
    assert result.code == 2, (result.out, result.err)
    assert (f"--server: {metrics} is not a gRPC server (an HTTP port, such as serve "
            "--metrics-addr?), so not the admin API (default 127.0.0.1:18001") in result.err


def big_credential(name: str, size: int) -> str:
    return (f"apiVersion: controlplane/v1\nkind: Credential\nmetadata: {{name: {name}}}\n"
            f'spec: {{header: x-api-key, value: "{"k" * size}"}}\n')


def test_an_apply_over_etcds_request_limit_names_the_resource(serve: ServeProcess) -> None:
    result = cli(["apply", "-f", "-"], server=serve.admin,
                 stdin=big_credential("huge-key", 2_000_000))
    assert result.code == 2, (result.out, result.err)
    assert "Credential/huge-key: too large: " in result.err
    assert "bytes, limit 1572864" in result.err
    assert "unavailable" not in result.err
    listed = cli(["get", "credentials", "-o", "json"], server=serve.admin)
    assert "huge-key" not in listed.out, "nothing written"
    small = cli(["apply", "-f", "-"], server=serve.admin, stdin=big_credential("ok-key", 10))
    assert small.code == 0, small.err  # the server is fine


def test_a_second_serve_on_a_data_dir_in_use_exits_2_naming_the_holder(
    serve: ServeProcess,
) -> None:
    assert serve.proc is not None
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "controlplane", "serve", "--data-dir", str(serve.data_dir),
         "--xds-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--metrics-addr", ""],
        capture_output=True, text=True, timeout=30, cwd=REPO)
    assert second.returncode == 2, second.stderr
    assert time.monotonic() - started < 10, "it exits at once, without starting etcd"
    assert (f"--data-dir: {serve.data_dir} is in use by controlplane serve pid "
            f"{serve.proc.pid} (xds {serve.xds}, admin {serve.admin}, metrics "
            f"127.0.0.1:{serve.metrics_port})") in second.stderr
    assert cli(["get", "upstreams"], server=serve.admin).code == 0  # the holder is fine


_HOLD = """
import sys, time
from pathlib import Path
from controlplane.store.datadir import DataDirLock
lock = DataDirLock(Path(sys.argv[1]))
lock.acquire()
lock.describe(admin="127.0.0.1:1")
print("held", flush=True)
time.sleep(120)
"""


def test_the_lock_goes_with_its_holder_however_it_ends(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(InvalidInputError, match=f"pid {holder.pid} \\(admin 127.0.0.1:1\\)"):
            DataDirLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)  # no clean-up runs; the file stays
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    assert (tmp_path / "serve.lock").exists()
    lock = DataDirLock(tmp_path)
    lock.acquire()  # no stale-pid guess: the kernel dropped the dead holder's flock
    lock.release()


ROLLOUT = """
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: watched}
spec:
  active: v1
  versions:
    v1: {endpoints: ["127.0.0.1:9"]}
    v2: {endpoints: ["127.0.0.1:9"]}
---
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: watched-v2}
spec: {upstream: watched, from: v1, to: v2, steps: [50, 100], stepInterval: 1h}
"""


def test_rollout_watch_into_a_pipe_streams_one_line_per_change(serve: ServeProcess) -> None:
    assert cli(["apply", "-f", "-"], server=serve.admin, stdin=ROLLOUT).code == 0
    watch = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "rollout", "status", "watched-v2", "--watch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "CONTROLPLANE_SERVER": serve.admin})
    try:
        assert watch.stdout is not None
        received: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [received.put(x) for x in watch.stdout or ()],
                                  daemon=True)
        reader.start()
        def next_line() -> str:
            try:
                return received.get(timeout=15)
            except queue.Empty:
                raise AssertionError(f"no line within 15 s after {lines}: not streamed") from None

        lines: list[str] = []
        lines.append(next_line())
        while "Progressing (step 1/2" not in lines[-1]:
            lines.append(next_line())
        # A line arrives while the rollout is still going: streamed, not buffered.
        assert watch.poll() is None
        promoted = cli(["rollout", "promote", "watched-v2", "--full"], server=serve.admin)
        assert promoted.code == 0, promoted.err
        assert watch.wait(30) == 0
        reader.join(10)
        while not received.empty():
            lines.append(received.get_nowait())
    finally:
        if watch.poll() is None:
            watch.send_signal(signal.SIGKILL)
            watch.wait(10)
        for pipe in (watch.stdout, watch.stderr):
            if pipe is not None:
                pipe.close()
    assert all(line.endswith("\n") and "\x1b" not in line for line in lines), lines
    assert lines[-1].startswith("rollout/watched-v2: Succeeded (step 2/2, 100% on v2)")
    assert len(lines) == len(set(lines)), "one line per change, none repeated"
