"""Shared names are spelled once: `controlplane/contract.py` holds them, they say what
Envoy and etcd expect, no other module repeats one as a literal, and every error class
the admin API can name is found again by that name."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from controlplane import contract, errors
from controlplane.contract import FINAL_PHASES, Phase

PACKAGE = Path(contract.__file__).parent
SHARED: frozenset[str] = frozenset(
    [*contract.DISCOVERY_SERVICE, *(p.value for p in Phase), contract.FIELD_ERRORS_KEY,
     contract.ERROR_CLASS_KEY])
"""Every value the contract module names."""


@pytest.mark.parametrize(("type_url", "message"), [
    (contract.CLUSTER_TYPE, Cluster),
    (contract.ENDPOINT_TYPE, ClusterLoadAssignment),
    (contract.LISTENER_TYPE, Listener),
    (contract.ROUTE_TYPE, RouteConfiguration),
    (contract.SECRET_TYPE, Secret),
])
def test_type_urls_name_envoys_messages(type_url: str, message: Any) -> None:
    assert type_url == f"type.googleapis.com/{message.DESCRIPTOR.full_name}"


def test_phases_keep_the_values_etcd_holds() -> None:
    # Rollout statuses already in etcd carry these strings: renaming one breaks them.
    assert [p.value for p in Phase] == ["Pending", "Progressing", "Paused", "Promoting",
                                        "Succeeded", "RollingBack", "RolledBack", "Aborted"]
    assert {p.value for p in FINAL_PHASES} == {"Succeeded", "RolledBack", "Aborted"}
    assert not FINAL_PHASES & contract.ACTIVE_PHASES
    assert FINAL_PHASES | contract.ACTIVE_PHASES == set(Phase)


def literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant in `path` (a whole docstring is one)."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_module_repeats_a_shared_name() -> None:
    copies = [f"{path.relative_to(PACKAGE.parent)}:{line}: {value!r}"
              for path in sorted(PACKAGE.rglob("*.py"))
              if path.name != "contract.py" and not path.name.endswith(("_pb2.py", "_grpc.py"))
              for line, value in literals(path) if value in SHARED]
    assert not copies, "import these from controlplane.contract:\n" + "\n".join(copies)


def test_every_error_class_is_found_by_its_name() -> None:
    def subclasses(cls: type[errors.ControlPlaneError]) -> list[type[errors.ControlPlaneError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    found = subclasses(errors.ControlPlaneError)
    assert errors.StoreUnavailableError in found and errors.RequestTooLargeError in found
    for cls in found:
        assert errors.error_class(cls.__name__) is cls
    assert errors.error_class("ValueError") is None  # not ours: never raised as one
    assert errors.error_class("") is None
