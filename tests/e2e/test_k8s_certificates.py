"""deploy/k8s's certificate steps, run for real without a cluster: the `issuer` container's
script against `serve --tls-dir`, then an Envoy pod's init container, then Envoy with
the Kubernetes bootstrap. Paths and the Service address are mapped to this host; the
commands and the script are the manifests' own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.e2e.test_backbone import FIRST_CONFIG_S, edge_yaml
from tests.support.controlplane import REPO, ServeProcess, cli
from tests.support.envoy import Envoy, start_envoy
from tests.support.ports import free_port
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

K8S = REPO / "deploy" / "k8s"
POD_NAME = "envoy-edge-7d9f8-x2k4q"


def _docs(name: str) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d
            for d in yaml.safe_load_all((K8S / name).read_text())}


def _container(name: str, workload: str, container: str, *, init: bool = False
               ) -> dict[str, Any]:
    spec = _docs(name)[workload]["spec"]["template"]["spec"]
    found: dict[str, Any] = next(
        c for c in spec["initContainers" if init else "containers"] if c["name"] == container)
    return found


def _serial(directory: Path) -> int:
    cert = x509.load_pem_x509_certificate((directory / "client.crt").read_bytes())
    return cert.serial_number


@pytest.fixture
def issuer_script(tmp_path: Path) -> Iterator[tuple[ServeProcess, Path, Path]]:
    """serve --tls-dir, and the `issuer` container's script beside it (renewing every
    second instead of every 6 h): (serve, its tls dir, the issuer volume)."""
    tls, issuer = tmp_path / "tls", tmp_path / "issuer"
    issuer.mkdir()
    cp = ServeProcess(tmp_path / "cp", extra_args=("--tls-dir", str(tls))).start()
    script = _container("controlplane.yaml", "Deployment/controlplane", "issuer")["args"][0]
    script = (script.replace("/var/run/controlplane/tls", str(tls))
              .replace("/var/run/controlplane/issuer", str(issuer))
              .replace("127.0.0.1:18001", cp.admin).replace("sleep 21600", "sleep 1"))
    # `controlplane` is the venv's console script, importing this checkout.
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("CONTROLPLANE_TLS_DIR", None)
    with open(tmp_path / "issuer.log", "wb") as log:
        proc = subprocess.Popen(["/bin/sh", "-c", script], env=env, start_new_session=True,
                                stdout=log, stderr=log)
    try:
        yield cp, tls, issuer
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its `sleep`, by the script's id
        proc.wait(10)
        cp.stop()


def test_an_envoy_pod_gets_its_certificate_and_its_config_over_mtls(
    tmp_path: Path, issuer_script: tuple[ServeProcess, Path, Path],
) -> None:
    cp, tls, issuer = issuer_script
    current = issuer / "current"
    first = wait_for_sync(lambda: (current / "client.key").exists() and _serial(current),
                          timeout=30, message="the issuer script wrote its first certificate")
    # From now on it renews with its own certificate: serve's admin one is gone.
    (tls / "client.crt").unlink()
    (tls / "client.key").unlink()
    wait_for_sync(lambda: (current / "client.key").exists() and _serial(current) != first,
                  timeout=30, message="the issuer renewed its certificate with the last one")
    renewed = x509.load_pem_x509_certificate((current / "client.crt").read_bytes())
    uris = renewed.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://controlplane/user/envoy-issuer/admin"]

    # The init container, with the Secret (a copy of issuer/current) mounted.
    secret = tmp_path / "secret"
    secret.mkdir()
    for name in ("ca.crt", "client.crt", "client.key"):
        (secret / name).write_bytes((current / name).read_bytes())
    pod_tls = tmp_path / "pod-tls"
    init = _container("envoy-edge.yaml", "Deployment/envoy-edge", "certificate", init=True)
    args = [a.replace("controlplane.controlplane.svc:18001", cp.admin)
            .replace("/var/run/controlplane/issuer", str(secret))
            .replace("/etc/envoy/tls", str(pod_tls)).replace("$(POD_NAME)", POD_NAME)
            for a in init["args"]]
    issued = cli(args)
    assert issued.code == 0, issued.err

    # Envoy with the rendered bootstrap, its node id overridden as in the pod.
    as_issuer = {"CONTROLPLANE_TLS_DIR": str(secret)}  # serve's own admin certificate is gone
    applied = cli(["apply", "-f", "-"], server=cp.admin, env=as_issuer,
                  stdin=edge_yaml(port=free_port(), v1=free_port(), v2=free_port()))
    assert applied.code == 0, applied.err
    text = (K8S / "envoy-edge.bootstrap.yaml").read_text()
    bootstrap = yaml.safe_load(text.replace("/etc/envoy/tls", str(pod_tls))
                               .replace("controlplane.controlplane.svc", "127.0.0.1")
                               .replace("port_value: 18000", f"port_value: {cp.xds_port}"))
    bootstrap["admin"]["address"]["socket_address"] = {"address": "127.0.0.1",
                                                       "port_value": free_port()}
    envoy: Envoy = start_envoy(bootstrap, tmp_path / "envoy",
                               extra_args=("--service-node", POD_NAME))
    try:
        wait_for_sync(lambda: envoy.dynamic_names("listeners") == ["edge-http"],
                      timeout=FIRST_CONFIG_S, message="the pod's Envoy got its listener")
        items = json.loads(cli(["get", "proxies", "-o", "json"], server=cp.admin,
                               env=as_issuer).out)["items"]
        (proxy,) = [p for p in items if p["nodeId"] == POD_NAME]
        assert proxy["group"] == "edge"
    finally:
        envoy.stop()
