"""`credential rotate` says what it did, through a real Envoy to a real upstream.

After each rotation the header the upstream receives is the one the command said
Envoy now sends; a rotation that would change nothing (the file not yet rewritten,
with or without --emergency) exits 2, writes nothing and leaves the header alone; an
emergency rotation revokes only the value it replaced, and that value is refused after.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_backbone import CONVERGE_S, FIRST_CONFIG_S, apply, edge_yaml
from tests.support.controlplane import CliResult, ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.http import get_sync
from tests.support.ports import free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e


def config_yaml(port: int, upstream_port: int, secret_file: Path) -> str:
    return edge_yaml(port=port, versions=f"""\
    v1: {{endpoints: ["127.0.0.1:{upstream_port}"], credential: payments-key}}""", extra=f"""\
---
apiVersion: controlplane/v1
kind: Credential
metadata: {{name: payments-key}}
spec: {{header: x-api-key, valueFrom: {{file: "{secret_file}"}}}}
""")


def received(port: int) -> str:
    """The x-api-key the upstream received for one request through Envoy."""
    response = get_sync(port, "/anything", timeout=2.0)
    assert response.status == 200, response.text[:200]
    key: str = response.json()["headers"].get("x-api-key", "")
    return key


def audit_actions(serve: ServeProcess) -> list[str]:
    entries = json.loads(cli(["audit", "-o", "json"], server=serve.admin).out)
    return [str(e["action"]) for e in entries]


def test_each_rotation_says_which_generation_the_upstream_now_receives(
    serve: ServeProcess, upstream_factory: Callable[..., Upstream],
    envoy_factory: Callable[..., Envoy], tmp_path: Path,
) -> None:
    values = [f"gen{i}-{secrets.token_hex(6)}" for i in (1, 2, 3)]
    secret_file = tmp_path / "payments-key"
    secret_file.write_text(values[0] + "\n")
    port = free_port()
    apply(serve, config_yaml(port, upstream_factory("v1").port, secret_file))
    envoy_factory(serve, "edge-1", "edge")
    wait_for_sync(lambda: received(port) == values[0], timeout=FIRST_CONFIG_S,
                  message="the upstream receives generation 1")

    def rotate(*args: str) -> CliResult:
        return cli(["credential", "rotate", "payments-key", *args], server=serve.admin)

    # The file still holds generation 1: nothing to rotate, nothing to revoke.
    before = audit_actions(serve)
    for args in ((), ("--emergency",)):
        result = rotate(*args)
        assert result.code == 2, (args, result.out, result.err)
        assert "still holds the value generation 1 sends" in result.err
        assert "write the new value to that file first" in result.err
        assert "rotated" not in result.out
    assert "Nothing was revoked" in result.err  # the --emergency one
    assert audit_actions(serve) == before, "a refused rotation writes nothing"
    assert {received(port) for _ in range(5)} == {values[0]}

    # The operator writes the new value first: generation 2, generation 1 not revoked.
    secret_file.write_text(values[1] + "\n")
    result = rotate()
    assert result.code == 0, result.err
    assert result.out.strip() == (
        "credential payments-key rotated: generation 2 is now sent by Envoy (generation 1 "
        "no longer sent, not revoked: it stays valid at the upstream until revoked there)")
    wait_for_sync(lambda: received(port) == values[1], timeout=CONVERGE_S,
                  message="the upstream receives generation 2")

    # An emergency rotation with a new value revokes the one it replaced.
    new_file = tmp_path / "payments-key.new"
    new_file.write_text(values[2] + "\n")
    result = rotate("--from-file", str(new_file), "--emergency", "-o", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"name": "payments-key", "generation": 3,
                                      "previousGeneration": 2, "previousRevoked": True}
    wait_for_sync(lambda: received(port) == values[2], timeout=CONVERGE_S,
                  message="the upstream receives generation 3")
    assert audit_actions(serve)[-1] == "credential/revoke"

    # The revoked value never comes back: the file still holds it.
    result = rotate()
    assert result.code == 2, (result.out, result.err)
    assert "revoked by an emergency rotation" in result.err
    assert {received(port) for _ in range(5)} == {values[2]}
    assert not any(v in result.out + result.err + serve.log() for v in values), "no leak"
