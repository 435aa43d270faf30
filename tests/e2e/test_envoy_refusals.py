"""Values a real Envoy refused are refused by `apply` now; what apply cannot know (a
`caFile` missing on the proxy's host) shows as a NACK traced to the resource.

"Before" is reproduced by writing the resource into etcd behind the API, as a state
stored before the rules existed holds it: the server loads it, translates it, and the
real Envoy NACKs the group's whole CDS update while it keeps serving its old config.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.model import Upstream
from controlplane.model.documents import load_yaml_documents, to_stored
from controlplane.store.keys import Keys
from tests.e2e.test_backbone import FIRST_CONFIG_S, apply, edge_yaml, version_behind
from tests.e2e.test_rollout import rollout_yaml, status
from tests.support.controlplane import ServeProcess, cli
from tests.support.envoy import Envoy
from tests.support.etcd_access import serve_kv
from tests.support.http import get_sync
from tests.support.ports import free_port
from tests.support.upstream import Upstream as EchoUpstream
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

NACK_S = 10.0


def put_behind_api(cp: ServeProcess, text: str) -> None:
    """Store the Upstream in `text` as the store would, without apply's checks."""
    [doc] = load_yaml_documents(text)[2:]
    upstream = Upstream.model_validate(doc)
    async def put() -> None:
        kv = serve_kv(cp.data_dir)
        try:
            await kv.put(Keys().resource("Upstream", upstream.name), to_stored(upstream))
        finally:
            await kv.close()
    asyncio.run(put())


def cds(cp: ServeProcess) -> dict[str, str]:
    items = json.loads(cli(["get", "proxies", "-o", "json"], server=cp.admin).out)["items"]
    return dict(items[0]["types"]["CDS"])


def next_nack(cp: ServeProcess, after: str) -> str:
    """The CDS NACK text of a version other than `after`, once the proxy sent one."""
    def nacked() -> str:
        state = cds(cp)
        return state["lastNack"] if state["lastNackVersion"] not in ("", after) else ""
    return wait_for_sync(nacked, timeout=NACK_S, message="the proxy NACKs the CDS update")


# Each was accepted by apply and NACKed by Envoy 1.40 (the whole group's CDS): a CR/LF
# breaks HttpHealthCheck.path's HTTP_HEADER_VALUE rule; a NUL in the SNI fails the TLS
# context of the cluster.
FORMERLY_NACKED = [
    pytest.param('  healthCheck: {path: "/healthz\\r\\nX-Evil: 1"}\n', None,
                 "spec.healthCheck.path", id="crlf-health-check-path"),
    pytest.param("", '{sni: "payments.internal\\0evil", clientCertificate: none, '
                 'caFile: /etc/ssl/certs/ca-certificates.crt}',
                 "spec.versions.v2.tls.sni", id="nul-sni"),
]


@pytest.mark.parametrize(("extra", "tls", "field"), FORMERLY_NACKED)
def test_a_value_envoy_nacked_is_refused_at_apply(
    serve: ServeProcess, upstream_factory: Callable[..., EchoUpstream],
    envoy_factory: Callable[..., Envoy], extra: str, tls: str | None, field: str,
) -> None:
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    good = edge_yaml(port=port, v1=v1.port, v2=v2.port)
    apply(serve, good)
    envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")
    v2_tls = "" if tls is None else f", tls: {tls}"
    bad = edge_yaml(port=port, extra=extra, versions=(
        f'    v1: {{endpoints: ["127.0.0.1:{v1.port}"]}}\n'
        f'    v2: {{endpoints: ["127.0.0.1:{v2.port}"]{v2_tls}}}'))

    # Before: the value reaches Envoy, which refuses the group's CDS update, and the
    # NACK names the upstream it came from.
    put_behind_api(serve, bad)
    text = next_nack(serve, after="")
    assert "Upstream/payments version v" in text, text
    assert get_sync(port, "/anything", timeout=1.0).json()["version"] == "v1"

    # Now: apply refuses it, names the field, and writes nothing.
    refused = cli(["apply", "-f", "-"], server=serve.admin, stdin=bad)
    assert refused.code == 2, refused
    assert f"Upstream/payments: {field}" in refused.err, refused.err
    # Applying the fix is accepted and the proxy ACKs it.
    apply(serve, good)
    wait_for_sync(lambda: cds(serve)["ackedVersion"] == cds(serve)["sentVersion"] != "",
                  timeout=NACK_S, message="the proxy ACKs the fixed CDS")


def test_a_missing_ca_file_shows_as_a_nack_traced_to_its_upstream(
    serve: ServeProcess, upstream_factory: Callable[..., EchoUpstream],
    envoy_factory: Callable[..., Envoy], tmp_path: Path,
) -> None:
    """Apply cannot know what files the proxy's host holds: the NACK says which upstream
    and version to fix, in `get proxies` and in the rollout it halts."""
    v1, v2 = upstream_factory("v1"), upstream_factory("v2")
    port = free_port()
    apply(serve, edge_yaml(port=port, v1=v1.port, v2=v2.port))
    envoy_factory(serve, "edge-1", "edge")
    version_behind(port, FIRST_CONFIG_S)("v1")
    missing = tmp_path / "nowhere" / "ca.pem"
    apply(serve, edge_yaml(port=port, versions=f"""    v1: {{endpoints: ["127.0.0.1:{v1.port}"]}}
    v2: {{endpoints: ["127.0.0.1:{v2.port}"], tls: {{clientCertificate: none, caFile: {missing}}}}}
""") + "---" + rollout_yaml(interval="1s"))

    text = next_nack(serve, after="")
    assert "payments|v2 (Upstream/payments version v2)" in text, text
    table = cli(["get", "proxies"], server=serve.admin)
    assert "Upstream/payments version v2" in table.out, table.out

    def halted() -> dict[str, object] | None:
        doc = status(serve)
        return doc if "Upstream/payments version v2" in str(doc.get("message")) else None
    doc = wait_for_sync(halted, timeout=NACK_S, message="rollout status shows the NACK")
    assert str(missing) in str(doc["message"]), doc
