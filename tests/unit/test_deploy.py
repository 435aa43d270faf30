"""compose.yaml and deploy/: checked by what runs without a Docker engine — they parse,
every file they name exists, and the Envoy bootstraps are the CLI's own and valid."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.model import DesiredState, parse_yaml
from tests.support.envoy import envoy_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def render_module() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_services_and_the_files_they_name() -> None:
    services = compose()["services"]
    assert {"etcd", "controlplane-1", "controlplane-2", "envoy-edge", "envoy-sidecar",
            "payments-v1", "payments-v2", "load", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file() or (
                ROOT / build.get("dockerfile", "")).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        if "healthcheck" in service:
            assert service["healthcheck"]["test"], name
    # Start order: the proxies wait for healthy replicas, the replicas for healthy etcd.
    assert services["controlplane-1"]["depends_on"]["etcd"]["condition"] == "service_healthy"
    assert services["envoy-edge"]["depends_on"]["controlplane-1"]["condition"] == (
        "service_healthy")


def test_dockerfile_copies_only_what_exists() -> None:
    for dockerfile in (DEPLOY / "Dockerfile", DEPLOY / "upstream" / "Dockerfile"):
        context = ROOT if dockerfile.parent == DEPLOY else dockerfile.parent
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (context / source).exists(), (dockerfile, source)


def test_the_bootstraps_are_what_controlplane_bootstrap_prints() -> None:
    for name, text in render_module().rendered().items():
        assert (DEPLOY / name).read_text() == text, (
            f"deploy/{name} is stale: run .venv/bin/python deploy/render.py")


@pytest.mark.parametrize("name", ["envoy/edge.yaml", "envoy/sidecar.yaml",
                                  "k8s/envoy-edge.bootstrap.yaml"])
def test_the_bootstraps_pass_envoy_validation(name: str) -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(DEPLOY / name)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_kubernetes_manifests() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    kinds: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / resource).read_text()):
            kinds[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    for generator in kustomization["configMapGenerator"]:
        for entry in generator["files"]:
            assert (DEPLOY / "k8s" / entry.split("=")[-1]).is_file()
    assert kinds["Deployment/controlplane"]["spec"]["replicas"] == 2
    assert kinds["StatefulSet/etcd"]["spec"]["replicas"] == 3
    assert kinds["Deployment/envoy-edge"]["spec"]["template"]["spec"]["volumes"][0][
        "configMap"]["name"] == "envoy-edge-bootstrap"


def test_the_compose_example_is_valid_state_for_the_compose_network() -> None:
    state = DesiredState.of(parse_yaml((ROOT / "examples" / "compose.yaml").read_text()))
    assert state.problems() == []
    services = compose()["services"]
    addresses = {services[f"payments-{v}"]["networks"]["mesh"]["ipv4_address"] for v in ("v1",
                                                                                          "v2")}
    endpoints = {e.split(":")[0] for v in state.upstreams["payments"].spec.versions.values()
                 for e in v.endpoints}
    assert endpoints == addresses
    assert set(state.groups()) == {"edge", "mesh"}


def test_monitoring_config() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    services = compose()["services"]
    for job in prometheus["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            assert target.split(":")[0] in services, target
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "controlplane.json").read_text())
    assert dashboard["panels"] and all(
        re.search(r"\w", t["expr"]) for p in dashboard["panels"] for t in p["targets"])
