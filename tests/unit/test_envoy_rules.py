"""Values Envoy refuses (its protoc-gen-validate rules) or cannot send are problems of
the desired state, so apply refuses them; and a NACK names the resource that caused it."""

from __future__ import annotations

import pytest

from controlplane.model import DesiredState, parse_yaml
from controlplane.model.envoy_rules import credential_value_problem, path_problem
from controlplane.translate.trace import trace_nack
from tests.support.states import PAYMENTS_EDGE

UPSTREAM = """
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec:
  active: v1
  versions:
    v1: {endpoints: ["127.0.0.1:9001"], credential: key}
    v2: {endpoints: ["127.0.0.1:9002"], tls: TLS}
  healthCheck: {path: PATH}
"""

CREDENTIAL = """
apiVersion: controlplane/v1
kind: Credential
metadata: {name: key}
spec: {header: x-api-key, value: VALUE}
"""

ROUTE = """
apiVersion: controlplane/v1
kind: Route
metadata: {name: payments}
spec: {listener: edge-http, upstream: payments, prefix: PREFIX}
"""

GOOD = {"PATH": '"/healthz"', "TLS": '{sni: payments.internal, caFile: /etc/ca.pem, '
        'subjectAltNames: [payments.internal, "*.payments.internal", "spiffe://x/y"]}',
        "VALUE": '"Bearer abc.def"', "PREFIX": '"/api/v1"'}


def problems(**bad: str) -> list[str]:
    values = {**GOOD, **bad}
    text = PAYMENTS_EDGE.split("---")[0]
    for doc in (UPSTREAM, CREDENTIAL, ROUTE):
        for key, value in values.items():
            doc = doc.replace(key, value)
        text += "---" + doc
    return [str(p) for p in DesiredState.of(parse_yaml(text)).problems()]


def test_good_values_have_no_problem() -> None:
    assert problems() == []


@pytest.mark.parametrize(("bad", "field", "reason"), [
    pytest.param({"PATH": '"/healthz\\r\\nX-Evil: 1"'}, "Upstream/payments: spec.healthCheck.path",
                 "control character", id="health-path-crlf"),
    pytest.param({"PATH": '"healthz"'}, "Upstream/payments: spec.healthCheck.path",
                 "start with '/'", id="health-path-relative"),
    pytest.param({"PATH": '"/health z"'}, "Upstream/payments: spec.healthCheck.path",
                 "without spaces", id="health-path-space"),
    pytest.param({"PREFIX": '"/api\\u0000"'}, "Route/payments: spec.prefix",
                 "control character", id="prefix-nul"),
    pytest.param({"PREFIX": '"/caf\\u00e9"'}, "Route/payments: spec.prefix",
                 "printable ASCII", id="prefix-non-ascii"),
    pytest.param({"PREFIX": '"/a#b"'}, "Route/payments: spec.prefix", "fragment",
                 id="prefix-fragment"),
    pytest.param({"TLS": '{sni: "payments.internal\\u0000evil"}'},
                 "Upstream/payments: spec.versions.v2.tls.sni", "control character",
                 id="sni-nul"),
    pytest.param({"TLS": '{sni: "pay ments"}'}, "Upstream/payments: spec.versions.v2.tls.sni",
                 "not a DNS host name", id="sni-space"),
    pytest.param({"TLS": '{caFile: "/etc/ca.pem\\n"}'},
                 "Upstream/payments: spec.versions.v2.tls.caFile", "control character",
                 id="cafile-lf"),
    pytest.param({"TLS": '{subjectAltNames: ["a b.example"]}'},
                 "Upstream/payments: spec.versions.v2.tls.subjectAltNames[0]",
                 "not a DNS host name", id="san-dns-space"),
    pytest.param({"TLS": '{subjectAltNames: ["spiffe://x/\\r"]}'},
                 "Upstream/payments: spec.versions.v2.tls.subjectAltNames[0]",
                 "control character", id="san-uri-cr"),
    pytest.param({"VALUE": '"abc\\r\\nX-Evil: 1"'}, "Credential/key: spec.value",
                 "control character", id="credential-crlf"),
    pytest.param({"VALUE": '"abc "'}, "Credential/key: spec.value", "whitespace",
                 id="credential-trailing-space"),
])
def test_values_envoy_refuses_are_problems(bad: dict[str, str], field: str, reason: str
                                           ) -> None:
    found = problems(**bad)
    assert len(found) == 1 and field in found[0] and reason in found[0], found


def test_a_credential_problem_never_shows_the_value() -> None:
    [found] = problems(VALUE='"s3cret\\nX: 1"')
    assert "s3cret" not in found


def test_a_rollout_cookie_value_must_fit_a_cookie_header() -> None:
    text = PAYMENTS_EDGE + """---
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: r}
spec: {upstream: payments, from: v1, to: v2, match: {cookie: "canary=a;b"}}
"""
    found = [str(p) for p in DesiredState.of(parse_yaml(text)).problems()]
    assert len(found) == 1 and "Rollout/r: spec.match.cookie" in found[0], found
    assert DesiredState.of(parse_yaml(text.replace("a;b", '\\"1\\"'))).problems() == []


@pytest.mark.parametrize(("path", "ok"), [
    ("/", True), ("/v1/items?x=1", True), ("/%20", True), ("", False), ("/\t", False),
])
def test_path_rule(path: str, ok: bool) -> None:
    assert (path_problem(path) is None) == ok


def test_credential_value_allows_inner_spaces_not_line_breaks() -> None:
    assert credential_value_problem("Bearer a b") is None
    assert credential_value_problem("a\x00b") is not None


@pytest.mark.parametrize(("text", "traced"), [
    pytest.param("Error adding/updating cluster(s) payments|v2: Failed to load trusted CA "
                 "certificates from /nope/ca.pem",
                 "Error adding/updating cluster(s) payments|v2 (Upstream/payments version v2): "
                 "Failed to load trusted CA certificates from /nope/ca.pem", id="cds"),
    pytest.param("Error adding/updating listener(s) edge-http: cannot bind",
                 "Error adding/updating listener(s) edge-http (Listener/edge-http): cannot bind",
                 id="lds"),
    pytest.param("Route config 'edge-http' is bad",
                 "Route config 'edge-http' (the routes of Listener/edge-http) is bad", id="rds"),
    pytest.param("secret credential-payments-key is bad",
                 "secret credential-payments-key (Credential/payments-key) is bad", id="sds"),
    pytest.param("Proto constraint validation failed", "Proto constraint validation failed",
                 id="none-of-ours"),
])
def test_trace_nack_names_the_resource(text: str, traced: str) -> None:
    assert trace_nack(text) == traced
    assert trace_nack(traced) == traced  # traced twice (a replica and the CLI): once


@pytest.mark.parametrize(("extra", "field", "reason"), [
    pytest.param("  connectTimeout: 0s\n", "spec.connectTimeout", "more than 0",
                 id="connect-timeout-zero"),
    pytest.param("  healthCheck: {interval: 0.0001s}\n", "spec.healthCheck.interval",
                 "at least 1ms", id="health-interval-rounds-to-zero"),
    pytest.param("  outlierDetection: {baseEjectionTime: 0ms}\n",
                 "spec.outlierDetection.baseEjectionTime", "more than 0", id="ejection-zero"),
    pytest.param("  timeout: 99999999999h\n", "spec.timeout", "protobuf Duration",
                 id="timeout-too-long"),
    pytest.param("  circuitBreakers: {maxConnections: 4294967296}\n",
                 "spec.circuitBreakers.maxConnections", "32-bit", id="uint32-overflow"),
    pytest.param("  rateLimit: {requestsPerSecond: 10, burst: 5000000000}\n",
                 "spec.rateLimit.burst", "32-bit", id="burst-overflow"),
])
def test_numbers_envoy_refuses_are_problems(extra: str, field: str, reason: str) -> None:
    text = PAYMENTS_EDGE + extra
    found = [str(p) for p in DesiredState.of(parse_yaml(text)).problems()]
    assert len(found) == 1 and f"Upstream/payments: {field}" in found[0] and reason in found[0], \
        found


def test_numbers_at_envoys_limits_are_accepted() -> None:
    text = PAYMENTS_EDGE + ("  connectTimeout: 1ms\n  timeout: 0s\n"
                            "  circuitBreakers: {maxConnections: 4294967295}\n")
    assert DesiredState.of(parse_yaml(text)).problems() == []


def test_a_rollout_match_header_value_has_no_control_character() -> None:
    text = PAYMENTS_EDGE + """---
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: r}
spec: {upstream: payments, from: v1, to: v2, match: {headers: {x-canary: "a\\x01b"}}}
"""
    found = [str(p) for p in DesiredState.of(parse_yaml(text)).problems()]
    assert len(found) == 1 and "Rollout/r: spec.match.headers.x-canary" in found[0], found
    assert "control character" in found[0]
    assert DesiredState.of(parse_yaml(text.replace("\\x01", " "))).problems() == []
