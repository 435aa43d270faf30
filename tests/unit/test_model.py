"""Validation at the edge: every bad field is reported with its location and reason."""

from __future__ import annotations

import pytest

from controlplane.errors import InvalidInputError
from controlplane.model import DesiredState, parse_duration, parse_yaml, to_document, to_stored
from controlplane.model.documents import from_stored

UPSTREAM = """
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec:
  active: v1
  versions:
    v1: {endpoints: ["127.0.0.1:9001"]}
    v2: {endpoints: ["127.0.0.1:9002"]}
  retries: {attempts: 2, on: "5xx,reset"}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(InvalidInputError) as info:
        parse_yaml(text)
    return [str(e) for e in info.value.errors]


def test_valid_upstream_round_trips_as_written() -> None:
    (ups,) = parse_yaml(UPSTREAM)
    doc = to_document(ups)
    assert doc["spec"]["retries"] == {"attempts": 2, "on": "5xx,reset"}  # `on` is not a boolean
    assert "healthCheck" not in doc["spec"]  # unset defaults are not invented
    assert from_stored(to_stored(ups)) == ups


@pytest.mark.parametrize(
    ("patch", "location", "reason"),
    [
        pytest.param("active: v9", "spec.active", "not one of versions", id="unknown-active"),
        pytest.param("timeout: 5 seconds", "spec.timeout", "not a duration", id="bad-duration"),
        pytest.param("bogus: 1", "spec.bogus", "Extra inputs", id="unknown-field"),
        pytest.param("retries: {on: sometimes}", "spec.retries.on", "unknown retry", id="retry-on"),
        pytest.param(
            "versions: {v1: {endpoints: ['http://payments.local:80']}}",
            "spec.versions.v1.endpoints", "without a scheme", id="endpoint-scheme",
        ),
        pytest.param(
            "versions: {v1: {endpoints: [payments.local:0]}}",
            "spec.versions.v1.endpoints", "port must be a number in 1-65535", id="endpoint-port",
        ),
        pytest.param(
            "versions: {v1: {endpoints: [pay_ments.local:80]}}",
            "spec.versions.v1.endpoints", "RFC 1123", id="endpoint-bad-name",
        ),
        pytest.param(
            "versions: {v1: {endpoints: ['::1:80']}}",
            "spec.versions.v1.endpoints", "in brackets", id="endpoint-ipv6-brackets",
        ),
        pytest.param(
            "versions: {v1: {endpoints: [10.0.0.300:80]}}",
            "spec.versions.v1.endpoints", "numeric label", id="endpoint-mistyped-ip",
        ),
        pytest.param(
            "versions: {v1: {endpoints: [payments.local]}}",
            "spec.versions.v1.endpoints", "port is missing", id="endpoint-no-port",
        ),
    ],
)
def test_invalid_upstream_fields(patch: str, location: str, reason: str) -> None:
    key = patch.split(":")[0]
    lines = [ln for ln in UPSTREAM.splitlines() if not ln.startswith(f"  {key}:")]
    if key == "versions":
        lines = [ln for ln in lines if not ln.startswith("    v")]
    text = "\n".join(lines) + f"\n  {patch}\n"
    found = errors_of(text)
    assert any(location in e and reason in e for e in found), found


def test_every_error_is_reported_at_once() -> None:
    found = errors_of(
        "apiVersion: controlplane/v1\nkind: Rollout\nmetadata: {name: r}\n"
        "spec: {upstream: p, from: v1, to: v1, steps: [10, 5, 120]}\n"
        "---\nkind: Gadget\n"
    )
    assert any("steps" in e and "strictly increasing" in e for e in found), found
    assert any("kind" in e and "Gadget" in e for e in found), found


def test_missing_api_version_and_bad_yaml() -> None:
    assert any("apiVersion" in e for e in errors_of("kind: Upstream\nmetadata: {name: a}\n"))
    assert any(e.startswith("yaml") for e in errors_of("kind: [unclosed\n"))


def test_credential_value_is_redacted_outside_the_store() -> None:
    (cred,) = parse_yaml(
        "apiVersion: controlplane/v1\nkind: Credential\nmetadata: {name: k}\n"
        "spec: {header: x-api-key, value: hunter2}\n"
    )
    assert "hunter2" not in str(to_document(cred)) and "hunter2" not in repr(cred)
    assert b"hunter2" in to_stored(cred)


def test_cross_resource_problems() -> None:
    state = DesiredState.of(parse_yaml(UPSTREAM + """
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: r}
spec: {listener: nope, upstream: ghost}
---
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: a}
spec: {upstream: payments, from: v1, to: v3}
---
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: b}
spec: {upstream: payments, from: v1, to: v2}
"""))
    found = [str(p) for p in state.problems()]
    assert any("Route/r: spec.listener" in p for p in found)
    assert any("Route/r: spec.upstream" in p for p in found)
    assert any("Rollout/a: spec.to" in p for p in found)
    assert any("one rollout per upstream" in p for p in found)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5), ("1m30s", 90), ("1h", 3600), ("0.25s", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5 s", "1d", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
