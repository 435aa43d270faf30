"""compose.yaml and deploy/: checked by what runs without a Docker engine — they parse,
every file they name exists, and the Envoy bootstraps are the CLI's own and valid."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
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


@pytest.mark.parametrize("name", ["envoy/edge.yaml", "envoy/sidecar.yaml"])
def test_the_bootstraps_pass_envoy_validation(name: str) -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(DEPLOY / name)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


K8S = DEPLOY / "k8s"


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def k8s_objects() -> dict[str, dict[str, Any]]:
    """`Kind/name` → object, over every file the kustomization lists."""
    objects: dict[str, dict[str, Any]] = {}
    for resource in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def generated_files() -> dict[str, str]:
    """ConfigMap name → the file its data comes from (kustomize's configMapGenerator)."""
    return {generator["name"]: entry.split("=")[-1]
            for generator in kustomization()["configMapGenerator"]
            for entry in generator["files"]}


def pod_templates() -> dict[str, dict[str, Any]]:
    return {name: obj["spec"]["template"] for name, obj in k8s_objects().items()
            if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")}


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=V` or `--name V` in `args`."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def mounts(container: dict[str, Any]) -> dict[str, str]:
    """Mount path → volume name."""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def cli(args: list[str]) -> Any:
    """`args` parsed by the real `controlplane` parser: every flag a manifest passes exists."""
    from controlplane.cli.main import build_parser
    from controlplane.main import _server_commands

    return build_parser(_server_commands).parse_args(args)


def test_kubernetes_manifests_parse_and_kustomize_lists_every_file() -> None:
    listed = set(kustomization()["resources"]) | set(generated_files().values())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, "deploy/k8s and kustomization.yaml disagree"
    objects = k8s_objects()
    assert objects["Deployment/controlplane"]["spec"]["replicas"] == 2
    assert objects["StatefulSet/etcd"]["spec"]["replicas"] == 3
    for name, template in pod_templates().items():
        volumes = template["spec"].get("volumes", [])
        for volume in volumes:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in generated_files(), (name, volume)
        claims = objects[name]["spec"].get("volumeClaimTemplates", [])
        names = {v["name"] for v in volumes} | {c["metadata"]["name"] for c in claims}
        for container in (template["spec"]["containers"]
                          + template["spec"].get("initContainers", [])):
            assert set(mounts(container).values()) <= names, (name, container["name"])
    # The RoleBinding gives the control plane's pods their ServiceAccount's Role.
    binding = objects["RoleBinding/controlplane-issuer"]
    assert f"Role/{binding['roleRef']['name']}" in objects
    account = pod_templates()["Deployment/controlplane"]["spec"]["serviceAccountName"]
    assert {"kind": "ServiceAccount", "name": account,
            "namespace": "controlplane"} in binding["subjects"]
    assert f"ServiceAccount/{account}" in objects


def test_serve_runs_with_a_tls_dir_in_kubernetes() -> None:
    served = 0
    for name, template in pod_templates().items():
        for container in template["spec"]["containers"]:
            args = container.get("args", [])
            if args[:1] != ["serve"]:
                continue
            served += 1
            tls_dir = cli(args).tls_dir
            assert tls_dir, f"{name}: serve without --tls-dir takes any proxy's word for its group"
            assert tls_dir in mounts(container), f"{name}: --tls-dir {tls_dir} is not a volume"
    assert served


def test_no_service_exposes_a_plaintext_xds_or_admin_port() -> None:
    objects = k8s_objects()
    for name, service in objects.items():
        if service["kind"] != "Service":
            continue
        selector = service["spec"].get("selector", {})
        for workload, template in pod_templates().items():
            if not selector or not selector.items() <= template["metadata"]["labels"].items():
                continue
            for container in template["spec"]["containers"]:
                args = container.get("args", [])
                if args[:1] != ["serve"]:
                    continue
                parsed = cli(args)
                ports = {int(a.rpartition(":")[2]) for a in (parsed.xds_addr, parsed.admin_addr)}
                exposed = {p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
                assert not (ports & exposed) or parsed.tls_dir, (name, workload)


def _bootstrap_of(template: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The Envoy bootstrap a pod runs (from its ConfigMap's generator file) and where it
    is mounted."""
    envoy = next(c for c in template["spec"]["containers"] if c["name"] == "envoy")
    config_path = envoy["args"][envoy["args"].index("-c") + 1]
    volume = mounts(envoy)[str(Path(config_path).parent)]
    configmap = next(v["configMap"]["name"] for v in template["spec"]["volumes"]
                     if v["name"] == volume)
    bootstrap = yaml.safe_load((K8S / generated_files()[configmap]).read_text())
    return bootstrap, config_path


def test_every_envoy_pod_gets_its_node_bound_certificate_from_an_init_step() -> None:
    from controlplane.spiffe import SERVER_ID

    objects = k8s_objects()
    envoys = {name: t for name, t in pod_templates().items()
              if any(c["name"] == "envoy" for c in t["spec"]["containers"])}
    assert envoys
    for name, template in envoys.items():
        bootstrap, _ = _bootstrap_of(template)
        xds = next(c for c in bootstrap["static_resources"]["clusters"]
                   if c["name"] == "xds_cluster")
        tls = xds["transport_socket"]["typed_config"]["common_tls_context"]
        cert_file = tls["tls_certificates"][0]["certificate_chain"]["filename"]
        tls_dir = str(Path(cert_file).parent)
        assert tls["validation_context"]["match_typed_subject_alt_names"] == [
            {"san_type": "URI", "matcher": {"exact": SERVER_ID}}], name

        envoy = next(c for c in template["spec"]["containers"] if c["name"] == "envoy")
        assert flag(envoy["args"], "--service-node") == "$(POD_NAME)", name
        issuing = [c for c in template["spec"].get("initContainers", [])
                   if c.get("args", [])[:2] == ["cert", "issue"]]
        assert len(issuing) == 1, f"{name}: no init container issues the proxy's certificate"
        init = issuing[0]
        args = cli(init["args"])
        # Bound to the node id Envoy claims, for the group its bootstrap names.
        assert args.node_id == "$(POD_NAME)" and args.group == bootstrap["node"]["cluster"]
        env = {e["name"]: e.get("valueFrom") for e in init["env"]}
        assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        # Written where Envoy reads it, on a volume the two share, in memory.
        assert args.out == tls_dir
        assert mounts(init)[tls_dir] == mounts(envoy)[tls_dir], name
        volume = next(v for v in template["spec"]["volumes"]
                      if v["name"] == mounts(envoy)[tls_dir])
        assert volume.get("emptyDir") == {"medium": "Memory"}, name
        # Against the control plane's admin Service, authenticated with the Secret
        # the control plane's pods publish.
        host, _, port = args.server.rpartition(":")
        service = objects[f"Service/{host.split('.')[0]}"]
        assert int(port) in {p["port"] for p in service["spec"]["ports"]
                             if p["name"] == "admin"}
        issuer = next(v for v in template["spec"]["volumes"]
                      if v["name"] == mounts(init)[args.client_tls_dir])
        secret = issuer["secret"]["secretName"]
        published = pod_templates()["Deployment/controlplane"]["spec"]["containers"]
        publisher = next(c for c in published if c["name"] == "publisher")
        assert f"secret generic {secret}" in publisher["args"][0]
        # ...which its Role lets it write (and no other Secret but by creating it).
        role = objects["Role/controlplane-issuer"]
        assert any(secret in rule.get("resourceNames", []) and "patch" in rule["verbs"]
                   for rule in role["rules"])
        assert all(rule.get("resourceNames") or rule["verbs"] == ["create"]
                   for rule in role["rules"])
        # A proxy gets no Kubernetes API token.
        assert template["spec"]["automountServiceAccountToken"] is False, name


def test_the_kubernetes_bootstrap_passes_envoy_validation(tmp_path: Path) -> None:
    """With a real certificate, key and CA where the init container writes them."""
    from controlplane.secrets.ca import CertificateAuthority

    ca = CertificateAuthority.create(now=time.time())
    issued = ca.issue_client("edge", uri="spiffe://controlplane/group/edge/node/edge-0",
                             now=time.time(), lifetime_s=3600)
    (tmp_path / "ca.crt").write_text(ca.cert_pem)
    (tmp_path / "proxy.crt").write_text(issued.cert_pem)
    (tmp_path / "proxy.key").write_bytes(issued.key_pem.get_secret_value())
    text = (K8S / "envoy-edge.bootstrap.yaml").read_text()
    assert render_module().K8S_TLS_DIR in text
    config = tmp_path / "envoy.yaml"
    config.write_text(text.replace(render_module().K8S_TLS_DIR, str(tmp_path)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_etcd_admits_only_the_control_plane() -> None:
    policy = k8s_objects()["NetworkPolicy/etcd"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app": "etcd"}}
    clients = {tuple(sorted(rule["from"][0]["podSelector"]["matchLabels"].items()))
               for rule in policy["ingress"] if {"port": 2379} in rule["ports"]}
    assert clients == {(("app", "controlplane"),), (("app", "etcd"),)}


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
