"""The resource kinds users write in YAML (docs/reference.md), validated at the edge.

Every model forbids unknown fields, so a typo is an error, not a silent no-op.
Field names are the camelCase ones users write; Python attributes are snake_case.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from controlplane.model.duration import Duration
from controlplane.model.endpoints import (
    Discovered,
    parse_endpoint,
    version_addresses,
)

API_VERSION = "controlplane/v1"

# RFC 1123 labels, no dots: names become Envoy cluster and stat names, where a dot splits tags.
_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# Envoy's router retry_on tokens (x-envoy-retry-on and x-envoy-retry-grpc-on).
RETRY_ON = frozenset(
    {
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
        "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
        "retriable-headers", "http3-post-connect-failure", "cancelled", "deadline-exceeded",
        "internal", "resource-exhausted", "unavailable",
    }
)


class Model(BaseModel):
    """Base: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


Name = Annotated[str, Field(pattern=_NAME, description="lowercase RFC 1123 label")]


class Metadata(Model):
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)


# ---- Listener -------------------------------------------------------------------------------


_SAN = re.compile(r"^[\x21-\x7e]{1,255}$")


def _check_san(value: str) -> str:
    # Envoy compares it with certificate names byte for byte; what no name holds is a typo.
    if not _SAN.match(value):
        raise ValueError(f"{value[:64]!r} is not a DNS name or URI: 1-255 printable ASCII "
                         "characters, no spaces or control characters (CR, LF, NUL)")
    return value


SubjectAltName = Annotated[str, AfterValidator(_check_san)]


class ListenerTLS(Model):
    """A listener's TLS, e.g. `tls: {certificate: auto, mtls: true, allowedGroups: [edge]}`.

    `certificate: auto` serves the group's certificate from our CA (over SDS). `mtls:
    true` requires a client certificate from our CA; then `allowedGroups` (proxy groups:
    their certificates' `spiffe://controlplane/group/<group>[/node/<id>]`) and
    `allowedSubjectAltNames` (exact DNS names or URIs) narrow it to the certificates
    that name one of them. Without either, any certificate our CA signed is accepted.
    """

    certificate: str = "auto"
    mtls: bool = False
    allowed_groups: list[Name] = Field(default_factory=list, max_length=256)
    allowed_subject_alt_names: list[SubjectAltName] = Field(default_factory=list,
                                                            max_length=256)

    @model_validator(mode="after")
    def _allowed_needs_mtls(self) -> ListenerTLS:
        if (self.allowed_groups or self.allowed_subject_alt_names) and not self.mtls:
            raise ValueError("allowedGroups and allowedSubjectAltNames name which client "
                             "certificates to accept: set mtls: true too")
        return self


class ListenerSpec(Model):
    group: Name
    port: int = Field(ge=1, le=65535)
    address: str = "0.0.0.0"
    tls: ListenerTLS | None = None

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value


# ---- Route ----------------------------------------------------------------------------------


class RouteSpec(Model):
    listener: Name
    hosts: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    prefix: str = "/"
    upstream: Name

    @field_validator("prefix")
    @classmethod
    def _slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


# ---- Upstream -------------------------------------------------------------------------------


class UpstreamTLS(Model):
    """TLS from the proxy to a version's endpoints (upstream mTLS), e.g.
    `tls: {clientCertificate: auto, sni: payments.internal}`.

    `clientCertificate: auto` presents the proxy group's certificate (the one a
    `tls: {certificate: auto}` listener serves, over SDS); `none` presents none. The
    upstream's certificate must chain to our CA (over SDS, both CAs during a CA
    rotation), or to the PEM bundle `caFile` names on the proxy's host, and, if
    `subjectAltNames` is set, carry one of them (a DNS name, or a URI with a scheme).
    """

    client_certificate: Literal["auto", "none"] = "auto"
    sni: str | None = Field(default=None, min_length=1, max_length=253)
    ca_file: str | None = Field(default=None, min_length=1)
    subject_alt_names: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)

    @field_validator("ca_file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r}: give an absolute path on the proxy's host")
        return value


OWN_KEYS = "/controlplane"
"""Where the control plane keeps its own state in etcd: no `endpointsFrom.etcd` reaches
into it (a prefix of it would list the state's keys as endpoints)."""
ETCD_PREFIX_MAX = 512
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


class EndpointsFrom(Model):
    """Where a version's endpoints come from besides `endpoints`, e.g.
    `endpointsFrom: {etcd: services/payments/v2}` or `{registered: true}`."""

    etcd: str | None = None
    registered: bool = False

    @field_validator("etcd")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value or len(value) > ETCD_PREFIX_MAX or not _PRINTABLE.match(value):
            raise ValueError(f"{value[:64]!r}: a key prefix of 1-{ETCD_PREFIX_MAX} printable "
                             "ASCII characters without spaces, e.g. services/payments/v2")
        if value.startswith(OWN_KEYS) or OWN_KEYS.startswith(value):
            raise ValueError(f"{value!r} reaches into the control plane's own keys "
                             f"({OWN_KEYS}/...): choose a prefix outside them")
        return value

    @model_validator(mode="after")
    def _something(self) -> EndpointsFrom:
        if self.etcd is None and not self.registered:
            raise ValueError("give etcd: PREFIX, registered: true, or both")
        return self


class VersionSpec(Model):
    endpoints: list[str] = Field(default_factory=list)
    endpoints_from: EndpointsFrom | None = None
    credential: Name | None = None
    tls: UpstreamTLS | None = None

    @model_validator(mode="after")
    def _has_a_source(self) -> VersionSpec:
        if not self.endpoints and self.endpoints_from is None:
            raise ValueError("endpoints: give at least one HOST:PORT, or endpointsFrom "
                             "(etcd: PREFIX or registered: true)")
        return self

    def addresses(self, discovered: Sequence[Discovered]) -> list[Discovered]:
        """What this version stands for, given the stored addresses of its (upstream,
        version): `model.endpoints.version_addresses` with its `endpointsFrom`."""
        source = self.endpoints_from
        return version_addresses(self.endpoints, discovered,
                                 etcd_prefix=source.etcd if source else None,
                                 registered=bool(source and source.registered))

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        problems, addresses = [], set()
        for endpoint in value:
            try:
                addresses.add(parse_endpoint(endpoint).address())
            except ValueError as exc:
                problems.append(str(exc))
        if problems:  # every bad one at once, not the first
            raise ValueError("; ".join(problems))
        # Names are case-insensitive: `A.example:80` and `a.example:80` are one endpoint.
        if len(addresses) != len(value):
            raise ValueError("endpoints must be unique")
        return value


class HealthCheck(Model):
    path: str = "/healthz"
    interval: Duration = Duration("5s")
    timeout: Duration = Duration("1s")
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=1, ge=1)


class OutlierDetection(Model):
    consecutive5xx: int = Field(default=5, ge=1, alias="consecutive5xx")
    interval: Duration = Duration("10s")
    base_ejection_time: Duration = Duration("30s")
    max_ejection_percent: int = Field(default=10, ge=0, le=100)


class CircuitBreakers(Model):
    max_connections: int = Field(default=1024, ge=1)
    max_pending_requests: int = Field(default=1024, ge=1)
    max_requests: int = Field(default=1024, ge=1)
    max_retries: int = Field(default=3, ge=0)


class Retries(Model):
    attempts: int = Field(default=1, ge=0, le=10)
    on: str = "5xx,reset,connect-failure"
    per_try_timeout: Duration | None = None

    @field_validator("on")
    @classmethod
    def _tokens(cls, value: str) -> str:
        unknown = sorted(t for t in value.split(",") if t.strip() not in RETRY_ON)
        if unknown:
            raise ValueError(f"unknown retry condition(s) {unknown}; known: {sorted(RETRY_ON)}")
        return value


class RateLimit(Model):
    requests_per_second: int = Field(ge=1)
    burst: int | None = Field(default=None, ge=1)


class UpstreamSpec(Model):
    active: str
    versions: dict[Name, VersionSpec] = Field(min_length=1)
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    circuit_breakers: CircuitBreakers | None = None
    retries: Retries | None = None
    timeout: Duration = Duration("15s")
    connect_timeout: Duration = Duration("1s")
    rate_limit: RateLimit | None = None

    @model_validator(mode="after")
    def _active_exists(self) -> UpstreamSpec:
        if self.active not in self.versions:
            raise ValueError(
                f"active: version {self.active!r} is not one of versions {sorted(self.versions)}"
            )
        return self


# ---- Credential -----------------------------------------------------------------------------


class ValueFrom(Model):
    file: str


class CredentialSpec(Model):
    header: str
    value: SecretStr | None = None
    value_from: ValueFrom | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _HEADER.match(value):
            raise ValueError(f"{value!r} is not a valid HTTP header name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> CredentialSpec:
        if (self.value is None) == (self.value_from is None):
            raise ValueError("value: set exactly one of value or valueFrom")
        return self


# ---- Rollout --------------------------------------------------------------------------------


class Match(Model):
    headers: dict[str, str] = Field(default_factory=dict)
    cookie: str | None = None


class Mirror(Model):
    percent: float = Field(default=100, gt=0, le=100)


# PromQL over Envoy's own /stats/prometheus names; ${cluster} is the version's Envoy
# cluster (`upstream|version`), ${window} the time since the step (e.g. `30s`).
_RQ = 'envoy_cluster_upstream_rq_xx{envoy_cluster_name="${cluster}"}'
DEFAULT_QUERIES: dict[str, str] = {
    "requests": f"sum(increase({_RQ}[${{window}}]))",
    "errors": "sum(increase(envoy_cluster_upstream_rq_xx{envoy_cluster_name=\"${cluster}\","
              "envoy_response_code_class=\"5\"}[${window}]))",
    "authFailures": "sum(increase(envoy_cluster_upstream_rq{envoy_cluster_name=\"${cluster}\","
                    "envoy_response_code=~\"401|403\"}[${window}]))",
    "p99LatencyMs": "histogram_quantile(0.99, sum by (le) (increase("
                    "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"${cluster}\"}"
                    "[${window}])))",
}
_TEMPLATE = re.compile(r"\$\{(\w+)\}")
_PLACEHOLDERS = frozenset({"cluster", "upstream", "version", "window"})


class PrometheusQueries(Model):
    """Where and what to ask Prometheus (`analysis.provider: prometheus`)."""

    url: str
    queries: dict[Literal["requests", "errors", "authFailures", "p99LatencyMs"], str] = Field(
        default_factory=lambda: dict(DEFAULT_QUERIES))  # type: ignore[arg-type]
    timeout: Duration = Duration("5s")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL of a Prometheus server")
        return value.rstrip("/")

    @field_validator("queries")
    @classmethod
    def _queries(cls, value: dict[str, str]) -> dict[str, str]:
        for name, query in value.items():
            unknown = set(_TEMPLATE.findall(query)) - _PLACEHOLDERS
            if unknown:
                raise ValueError(f"{name}: unknown placeholder(s) {sorted(unknown)}; "
                                 f"known: {sorted(_PLACEHOLDERS)}")
        return {**DEFAULT_QUERIES, **value}


class Analysis(Model):
    provider: Literal["envoy", "prometheus"] = "envoy"
    prometheus: PrometheusQueries | None = None
    min_requests: int = Field(default=50, ge=0)
    success_rate: float = Field(default=0.99, ge=0, le=1)
    p99_latency_ms: float | None = Field(default=None, gt=0, alias="p99LatencyMs")
    auth_failure_rate: float | None = Field(default=None, ge=0, le=1)
    failure_limit: int = Field(default=2, ge=1)
    inconclusive: Literal["pause", "continue", "rollback"] = "pause"

    @model_validator(mode="after")
    def _provider_settings(self) -> Analysis:
        if self.provider == "prometheus" and self.prometheus is None:
            raise ValueError("prometheus: provider prometheus needs prometheus.url "
                             "(and optionally PromQL templates in prometheus.queries)")
        return self


class RolloutSpec(Model):
    upstream: Name
    from_: str = Field(default="", alias="from")
    """Omitted (""): the upstream's `active`, filled in by apply (`with_from`), so what is
    stored and shown is explicit."""
    to: str
    strategy: Literal["canary", "bluegreen", "rolling", "mirror-then-canary"] = "canary"
    steps: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0], min_length=1)
    step_interval: Duration = Duration("30s")
    match: Match | None = None
    mirror: Mirror | None = None
    analysis: Analysis | None = None
    rollback_window: Duration = Duration("1h")
    ack_timeout: Duration = Duration("60s")
    """A step not ACKed by the fleet within this long pauses the rollout."""
    ack_fraction: float = Field(default=1.0, gt=0, le=1)
    """The share of connected proxies that must ACK a step before it counts."""
    on_nack: Literal["pause", "rollback"] = "pause"
    """What a NACKed step does: halt at the last good step, or roll back."""
    allow_empty_fleet: bool = False
    """Count a step as applied when no proxy of the groups that route to the upstream is
    connected. Off: such a step waits, and pauses after `ack_timeout`."""

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[float]) -> list[float]:
        for i, step in enumerate(value):
            if not 0 <= step <= 100:
                raise ValueError(f"steps[{i}] = {step}: a weight is a percent in 0-100")
            if i and step <= value[i - 1]:
                raise ValueError(f"steps[{i}] = {step}: steps must be strictly increasing")
        return value

    @field_validator("from_")
    @classmethod
    def _from_named(cls, value: str) -> str:
        if not value:
            raise ValueError("give a version name, or omit from to mean the upstream's active")
        return value

    @model_validator(mode="after")
    def _versions_differ(self) -> RolloutSpec:
        if self.from_ == self.to:
            raise ValueError("to: must name a different version than from")
        return self


# ---- ProxyGroup -----------------------------------------------------------------------------


class ProxyGroupSpec(Model):
    description: str = ""
    edge: bool = False


# ---- Envelopes ------------------------------------------------------------------------------


class _Resource(Model):
    api_version: Literal["controlplane/v1"] = Field(alias="apiVersion")
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name


class Listener(_Resource):
    kind: Literal["Listener"] = "Listener"
    spec: ListenerSpec


class Route(_Resource):
    kind: Literal["Route"] = "Route"
    spec: RouteSpec


class Upstream(_Resource):
    kind: Literal["Upstream"] = "Upstream"
    spec: UpstreamSpec


class Credential(_Resource):
    kind: Literal["Credential"] = "Credential"
    spec: CredentialSpec


class Rollout(_Resource):
    kind: Literal["Rollout"] = "Rollout"
    spec: RolloutSpec


class ProxyGroup(_Resource):
    kind: Literal["ProxyGroup"] = "ProxyGroup"
    spec: ProxyGroupSpec


Resource = Listener | Route | Upstream | Credential | Rollout | ProxyGroup
AnyResource = Annotated[Resource, Field(discriminator="kind")]

KINDS: dict[str, type[Resource]] = {
    "ProxyGroup": ProxyGroup,
    "Credential": Credential,
    "Upstream": Upstream,
    "Listener": Listener,
    "Route": Route,
    "Rollout": Rollout,
}
"""Kind name → model, in the order resources are applied (dependencies first)."""
