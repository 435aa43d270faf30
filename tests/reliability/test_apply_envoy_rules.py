"""`controlplane apply` of config Envoy (or our translator) would reject is refused before
it reaches a proxy: exit code 2, the field and the reason printed, nothing written.

Where Envoy's rule is not known to us, the NACK path of the rollout state machine
holds instead (tests/e2e). Probed on Envoy 1.40: a specific address next to the
wildcard on one port binds fine (reuse_port), and `a*b` is taken as an exact domain,
so neither is refused here (tests/unit/test_state_rules.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_backbone import apply, edge_yaml
from tests.e2e.test_rollout import rollout_yaml
from tests.reliability.conftest import Figures
from tests.reliability.test_admin_properties import etcd_dump
from tests.support.controlplane import ServeProcess, cli
from tests.support.ports import free_port

pytestmark = [pytest.mark.reliability]

PORT = free_port()

CASES = [
    pytest.param(f"""
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-http-2}}
spec: {{group: edge, port: {PORT}, address: 127.0.0.1}}
""", "Listener/edge-http-2: spec.port", "already used by Listener/edge-http", id="port-conflict"),
    pytest.param("""
apiVersion: controlplane/v1
kind: Route
metadata: {name: payments}
spec: {listener: edge-http, prefix: /, upstream: payments, hosts: ["api.example.com", "bad host"]}
""", "Route/payments: spec.hosts", "not host names", id="host-name"),
    pytest.param(f"""
apiVersion: controlplane/v1
kind: Listener
metadata: {{name: edge-http}}
spec: {{group: edge, port: {PORT}, address: 127.0.0.1, tls: {{certificate: my-cert}}}}
""", "Listener/edge-http: spec.tls.certificate", "not supported", id="tls-certificate"),
    pytest.param(rollout_yaml(extra='  match: {headers: {"x canary": "true"}}\n'),
                 "Rollout/payments-v2: spec.match.headers", "not an HTTP header name",
                 id="match-header"),
    pytest.param(rollout_yaml(extra="  match: {cookie: canary}\n"),
                 "Rollout/payments-v2: spec.match.cookie", "name=value", id="match-cookie"),
    pytest.param(rollout_yaml(extra='  match: {cookie: "canary=a b"}\n'),
                 "Rollout/payments-v2: spec.match.cookie", "RFC 6265", id="cookie-value"),
    # Envoy's HttpHealthCheck.path rule (HTTP_HEADER_VALUE, strict) NACKs the group's CDS.
    pytest.param(edge_yaml(port=PORT, v1=1, v2=2,
                           extra='  healthCheck: {path: "/healthz\\r\\nX-Evil: 1"}\n'),
                 "Upstream/payments: spec.healthCheck.path", "control character",
                 id="health-path-crlf"),
    pytest.param(edge_yaml(port=PORT, v1=1, v2=2, extra="  healthCheck: {path: healthz}\n"),
                 "Upstream/payments: spec.healthCheck.path", "start with '/'",
                 id="health-path-relative"),
    pytest.param("""
apiVersion: controlplane/v1
kind: Route
metadata: {name: payments}
spec: {listener: edge-http, prefix: "/pay\\0", upstream: payments}
""", "Route/payments: spec.prefix", "control character", id="prefix-nul"),
    pytest.param(edge_yaml(port=PORT, versions="""    v1: {endpoints: ["127.0.0.1:1"]}
    v2: {endpoints: ["127.0.0.1:2"], tls: {sni: "payments.internal\\0x"}}"""),
                 "Upstream/payments: spec.versions.v2.tls.sni", "control character",
                 id="sni-nul"),
    pytest.param(edge_yaml(port=PORT, versions="""    v1: {endpoints: ["127.0.0.1:1"]}
    v2: {endpoints: ["127.0.0.1:2"], tls: {caFile: "/etc/ca.pem\\n"}}"""),
                 "Upstream/payments: spec.versions.v2.tls.caFile", "control character",
                 id="cafile-lf"),
    pytest.param(edge_yaml(port=PORT, versions="""    v1: {endpoints: ["127.0.0.1:1"]}
    v2: {endpoints: ["127.0.0.1:2"], tls: {subjectAltNames: ["pay ments.internal"]}}"""),
                 "Upstream/payments: spec.versions.v2.tls.subjectAltNames[0]",
                 "not a DNS host name", id="san-space"),
    # An inline value with CRLF reached Envoy's credential injector: 503s.
    pytest.param("""
apiVersion: controlplane/v1
kind: Credential
metadata: {name: payments-key}
spec: {header: x-api-key, value: "k3y\\r\\nX-Evil: 1"}
""", "Credential/payments-key: spec.value", "control character", id="credential-crlf"),
]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("cp")).start()
    try:
        apply(proc, edge_yaml(port=PORT, v1=free_port(), v2=free_port()))
        yield proc
    finally:
        proc.stop()


def stored(cp: ServeProcess) -> dict[bytes, bytes]:
    """Resources, statuses and the audit log, as etcd holds them."""
    return {k: v for k, v in etcd_dump(cp).items()
            if k.split(b"/")[2] in (b"resources", b"status", b"audit", b"audit-head")}


@pytest.mark.parametrize(("text", "field", "reason"), CASES)
def test_apply_refuses_what_envoy_would_reject(cp: ServeProcess, text: str, field: str,
                                               reason: str, figures: Figures) -> None:
    before = stored(cp)
    assert before
    result = cli(["apply", "-f", "-"], server=cp.admin, stdin=text)
    assert result.code == 2, (result.code, result.out, result.err)
    assert field in result.err and reason in result.err, result.err
    assert stored(cp) == before  # nothing written, not even an audit entry
    # --dry-run refuses it the same way.
    dry = cli(["apply", "--dry-run", "-f", "-"], server=cp.admin, stdin=text)
    assert dry.code == 2 and field in dry.err, dry
    figures(exit_code=result.code, error=result.err.strip().splitlines()[0])
