"""Change → applied in a real Envoy: sovereign (the Python peer, REST polling) vs our server.

    .venv/bin/python -m benchmarks.vs_sovereign [--flips 10] [--json]

sovereign (PyPI `sovereign`) is pip-installed into its own venv under `.bench/`
(gitignored; `--venv` to put it elsewhere) on the first run. It serves one
RouteConfiguration from a Jinja2 template over a file source: two weighted clusters,
payments-v1 and payments-v2. Its source is re-read every second (`source_config.
refresh_rate: 1`, the smallest it takes), and Envoy polls it over REST. sovereign is
measured twice, each time with its own Envoy: with `refresh_delay: 1s` (the setting
of the first runs) and at its best, `refresh_delay: 0.1s` (Envoy polls ten times a
second; the target is judged against this one). A flip rewrites the source file
(100/0 ↔ 0/100).

Our side: `controlplane serve` (embedded etcd), the edge listener, route and upstream
applied through the admin API, and a real Envoy started from `controlplane bootstrap`
(ADS over gRPC). A flip is an Admin.Apply switching the upstream's `spec.active`
between v1 and v2 (the route's cluster changes).

One sample, on both sides: time.monotonic() just before the change, until Envoy's
/config_dump (polled every 5 ms) shows the route sending (most of) the traffic to the
new version. `--flips` samples each (10 by default), after one warm-up flip.
ratio = sovereign median (refresh_delay 1 s) / our median, ratio_best the same with
sovereign at 0.1 s. Target (a goal, printed, not asserted): ratio_best ≥ 20 times.

If sovereign cannot be installed or started, the script says why and exits 1: no
number is made up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from benchmarks._common import (
    ServeProcess,
    admin_client,
    apply_documents,
    child_pids,
    edge_documents,
    machine,
    markdown_table,
    wait_gone,
)
from tests.support.envoy import Envoy, start_envoy
from tests.support.ports import free_port
from tests.support.wait import wait_for_sync

TARGET_RATIO = 20.0
REFRESH_DELAY_S = 1.0
"""Envoy's REST poll of sovereign in the first runs."""
BEST_REFRESH_DELAY_S = 0.1
"""sovereign at its best: Envoy polls it ten times a second (its source poll stays 1 s)."""
REPO = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO / ".bench" / "sovereign-venv"
_POLL_S = 0.005


class SovereignUnavailable(RuntimeError):
    """sovereign could not be installed or started; the message says why."""


# ---- what Envoy has applied -------------------------------------------------------------

def routed_cluster(envoy: Envoy) -> str:
    """The cluster that gets most of the first route's traffic in Envoy's dynamic routes
    ("" when Envoy has no route yet)."""
    dump = envoy.config_dump("dynamic_route_configs")
    for config in dump.get("configs", []):
        for vhost in config.get("route_config", {}).get("virtual_hosts", []):
            for route in vhost.get("routes", []):
                action = route.get("route", {})
                if "cluster" in action:
                    return str(action["cluster"])
                weighted = action.get("weighted_clusters", {}).get("clusters", [])
                if weighted:
                    best = max(weighted, key=lambda c: int(c.get("weight", 0)))
                    return str(best["name"])
    return ""


def flip_times(envoy: Envoy, change: Callable[[str], None], *, flips: int,
               timeout: float) -> list[float]:
    """Seconds from each change to Envoy applying it; versions alternate v2, v1, ...

    The first flip is a warm-up and not returned.
    """
    samples = []
    for i in range(flips + 1):
        version = "v2" if i % 2 == 0 else "v1"
        t0 = time.monotonic()
        change(version)
        wait_for_sync(lambda v=version: routed_cluster(envoy).endswith(v), timeout=timeout,
                      interval=_POLL_S, message=f"Envoy routing to {version}")
        if i:
            samples.append(time.monotonic() - t0)
        time.sleep(0.2)
    return samples


# ---- sovereign --------------------------------------------------------------------------

def ensure_sovereign(venv: Path, log: Callable[[str], None]) -> Path:
    """The `sovereign` executable in `venv`, installing it from PyPI first if needed.

    Errors:
        SovereignUnavailable: the venv or the install failed (pip's output tail included).
    """
    exe = venv / "bin" / "sovereign"
    if exe.exists():
        return exe
    log(f"installing sovereign into {venv} (pip, once)")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "sovereign"]]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SovereignUnavailable(f"{' '.join(cmd)}: {exc}") from exc
        if done.returncode != 0:
            raise SovereignUnavailable(
                f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    if not exe.exists():
        raise SovereignUnavailable(f"pip installed sovereign but {exe} does not exist")
    return exe


_ROUTES_TEMPLATE = """\
resources:
  - '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration
    name: edge-http
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /}
            route:
              weighted_clusters:
                clusters:
{% for c in instances %}
                  - {name: "{{ c.name }}", weight: {{ c.weight }}}
{% endfor %}
"""


def _write_source(path: Path, version: str) -> None:
    """sovereign's file source: payments-v1/v2 weighted 100/0 toward `version`."""
    data = [{"name": f"payments-{v}", "weight": 100 if v == version else 0,
             "service_clusters": ["*"]} for v in ("v1", "v2")]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # atomic: sovereign never reads half a file


@contextlib.contextmanager
def sovereign_server(exe: Path, workdir: Path, port: int) -> Iterator[Path]:
    """Run sovereign (gunicorn, one worker) on 127.0.0.1:`port`; yields its source file.

    Errors:
        SovereignUnavailable: it exited or did not answer /healthcheck within 60 s.
    """
    source = workdir / "source.json"
    _write_source(source, "v1")
    (workdir / "routes.j2").write_text(_ROUTES_TEMPLATE)
    config = {
        "templates": {"default": [{"type": "routes", "spec": {
            "protocol": "file", "serialization": "jinja2",
            "path": str(workdir / "routes.j2")}}]},
        "sources": [{"type": "file", "config": {"spec": {
            "protocol": "file", "serialization": "json", "path": str(source)}}}],
        "source_config": {"refresh_rate": 1},
        "matching": {"enabled": False},
    }
    (workdir / "sovereign.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "SOVEREIGN_CONFIG": f"file://{workdir / 'sovereign.yaml'}",
           "SOVEREIGN_HOST": "127.0.0.1", "SOVEREIGN_PORT": str(port),
           "SOVEREIGN_WORKERS": "1", "SOVEREIGN_ENABLE_ACCESS_LOGS": "false"}
    log_path = workdir / "sovereign.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(exe)], env=env, cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise SovereignUnavailable(
                    f"sovereign exited ({proc.returncode}): "
                    f"{log_path.read_text(errors='replace')[-2000:]}")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck",
                                        timeout=1) as resp:
                return bool(resp.status == 200)
        try:
            wait_for_sync(healthy, timeout=60, interval=0.1, message="sovereign /healthcheck")
        except TimeoutError as exc:
            raise SovereignUnavailable(
                f"sovereign did not answer /healthcheck in 60 s: "
                f"{log_path.read_text(errors='replace')[-2000:]}") from exc
        yield source
    finally:
        workers = child_pids(proc.pid)  # gunicorn's workers: stopped by the master
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        wait_gone(workers, 10.0)


def _static_cluster(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}}}}]}]}}


def sovereign_bootstrap(sovereign_port: int, admin_port: int, listener_port: int, *,
                        refresh_delay: float = REFRESH_DELAY_S) -> dict[str, Any]:
    """Envoy with a static listener whose routes come from sovereign over REST, polled
    every `refresh_delay` seconds."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "edge",
        "rds": {"route_config_name": "edge-http", "config_source": {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "REST", "transport_api_version": "V3",
                "cluster_names": ["sovereign"], "refresh_delay": f"{refresh_delay:g}s",
                "request_timeout": "1s"}}},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "node": {"id": "bench-sovereign", "cluster": "edge"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{"name": "edge-http", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}]}],
            "clusters": [_static_cluster("sovereign", sovereign_port),
                         _static_cluster("payments-v1", free_port()),
                         _static_cluster("payments-v2", free_port())],
        },
    }


def measure_sovereign(venv: Path, refresh_delays: Sequence[float], *, flips: int,
                      timeout: float, log: Callable[[str], None]) -> list[list[float]]:
    """Flip times through sovereign, one list per Envoy REST `refresh_delay` (see the
    module docstring); one sovereign server, a fresh Envoy for each delay."""
    exe = ensure_sovereign(venv, log)
    out = []
    with tempfile.TemporaryDirectory(prefix="cp-bench-sovereign-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        with sovereign_server(exe, workdir, port) as source:
            for k, delay in enumerate(refresh_delays):
                _write_source(source, "v1")
                bootstrap = sovereign_bootstrap(port, free_port(), free_port(),
                                                refresh_delay=delay)
                envoy = start_envoy(bootstrap, workdir / f"envoy-{k}", log_level="warning")
                try:
                    wait_for_sync(lambda e=envoy: routed_cluster(e).endswith("v1"),
                                  timeout=timeout, message="Envoy's first route from sovereign")
                    log(f"sovereign (refresh_delay {delay:g}s): Envoy has its route; "
                        f"{flips} flips")
                    out.append(flip_times(envoy, lambda v: _write_source(source, v),
                                          flips=flips, timeout=timeout))
                finally:
                    envoy.stop()
    return out


# ---- ours -------------------------------------------------------------------------------

def measure_ours(*, flips: int, timeout: float, log: Callable[[str], None]) -> list[float]:
    """Flip times through `controlplane serve` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="cp-bench-ours-") as tmp:
        workdir = Path(tmp)
        listener_port = free_port()
        serve = ServeProcess(workdir / "data", workdir / "serve.log")
        try:
            apply_documents(serve.admin_port, edge_documents("v1", port=listener_port))
            text = subprocess.run(
                [sys.executable, "-m", "controlplane", "bootstrap", "--node-id", "bench-ours",
                 "--group", "edge", "--edge", "--admin-port", str(free_port()),
                 "--xds-addr", f"127.0.0.1:{serve.xds_port}"],
                capture_output=True, text=True, check=True, timeout=60).stdout
            envoy = start_envoy(yaml.safe_load(text), workdir / "envoy", log_level="warning")
            try:
                wait_for_sync(lambda: routed_cluster(envoy).endswith("v1"), timeout=timeout,
                              message="Envoy's first route from the control plane")
                log(f"controlplane: Envoy has its route; {flips} flips")
                with admin_client(serve.admin_port) as apply:
                    return flip_times(
                        envoy, lambda v: apply(edge_documents(v, port=listener_port)),
                        flips=flips, timeout=timeout)
            finally:
                envoy.stop()
        finally:
            serve.stop()


def summary(theirs: Sequence[float], best: Sequence[float], ours: Sequence[float], *,
            flips: int) -> dict[str, Any]:
    """The printed row: medians and maxima in ms, both ratios, the target judged on the
    ratio to sovereign at its best."""
    def ms(seconds: float) -> float:
        return round(seconds * 1e3, 1)

    ours_median = statistics.median(ours)
    ratio_best = statistics.median(best) / ours_median
    return {
        "flips": flips,
        "sovereign_refresh_delay_s": REFRESH_DELAY_S,
        "sovereign_median_ms": ms(statistics.median(theirs)),
        "sovereign_max_ms": ms(max(theirs)),
        "sovereign_best_refresh_delay_s": BEST_REFRESH_DELAY_S,
        "sovereign_best_median_ms": ms(statistics.median(best)),
        "sovereign_best_max_ms": ms(max(best)),
        "ours_median_ms": ms(ours_median),
        "ours_max_ms": ms(max(ours)),
        "ratio": round(statistics.median(theirs) / ours_median, 1),
        "ratio_best": round(ratio_best, 1),
        "target": f"ratio_best >= {TARGET_RATIO:g}x",
        "result": "PASS" if ratio_best >= TARGET_RATIO else "FAIL",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flips", type=int, default=10, help="measured flips per server")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help=f"sovereign's own venv (default {DEFAULT_VENV})")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds one flip may take")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        theirs, best = measure_sovereign(args.venv, (REFRESH_DELAY_S, BEST_REFRESH_DELAY_S),
                                         flips=args.flips, timeout=args.timeout, log=log)
    except SovereignUnavailable as exc:
        print(f"sovereign unavailable, nothing measured: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": f"sovereign unavailable: {exc}"}), flush=True)
        return 1
    ours = measure_ours(flips=args.flips, timeout=args.timeout, log=log)
    row = summary(theirs, best, ours, flips=args.flips)
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        print(markdown_table([row]))
        print(f"\nmachine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
