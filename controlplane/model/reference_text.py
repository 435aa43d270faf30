"""The prose of docs/reference.md: what each kind is for, each field's meaning, an example.

Data only; `reference.py` renders it together with what the models themselves say
(types, defaults, limits). A field's description is taken from FIELDS here, else from
its attribute docstring in resources.py: a new field needs one or the other, or
`tests/unit/test_reference_docs.py` fails and names it.
"""

from __future__ import annotations

KIND_ORDER = ("Listener", "Route", "Upstream", "Credential", "ProxyGroup", "Rollout")
"""The order a newcomer reads the kinds in: where traffic enters, down to how it moves."""

INTRO = """\
Every resource is a YAML document with `apiVersion: controlplane/v1`, a `kind`, a
`metadata` block and a `spec`; a file may hold several, separated by `---`.
`controlplane apply -f FILE` validates every document before anything is written and
lists every invalid field at once (exit 2); `controlplane get KIND NAME -o yaml`
prints one back. Unknown fields are errors, not silently ignored.

Conventions used below:

- **name**: a lowercase RFC 1123 label (`a-z`, `0-9`, `-`, at most 63 characters, no
  dots): names become Envoy cluster and stat names, where a dot would split tags.
- **duration**: a number and a unit, parts may be combined: `500ms`, `5s`, `1m30s`, `1h`.
- a default of `—` means the field is off (or, for an object, absent) unless set.
- a field marked **required** has no default.
"""

KIND_INTROS: dict[str, str] = {
    "Listener": (
        "Where traffic enters: a port that the proxies of one proxy group (Envoy's "
        "`node.cluster`, the `--group` given to `controlplane bootstrap`) listen on. "
        "Plain HTTP, or TLS with a certificate our CA issues for the group (over SDS)."
    ),
    "Route": (
        "Sends the requests a Listener receives for some hosts and a path prefix to an "
        "Upstream. Which of the upstream's versions gets them is the upstream's `active` "
        "version, or, while a Rollout runs, the rollout's split."
    ),
    "Upstream": (
        "A service behind the proxies, with its versions (each its own Envoy cluster, "
        "`upstream|version`) and the traffic policy all versions share. Without a "
        "rollout all traffic goes to `active`; changing `active` with `apply` is an "
        "instant switch (blue/green by hand)."
    ),
    "Credential": (
        "An upstream account: a header and its value that Envoy adds to every request to "
        "the versions naming it (`versions.V.credential`), with Envoy's "
        "`credential_injector`. The value reaches only the proxy groups that route to "
        "such a version, over SDS; it is sealed in etcd and never printed (`get` shows "
        "`[redacted]`). Give each version its own Credential so that a rollout moves "
        "the account together with the traffic, and `credential rotate` replaces a "
        "value under load."
    ),
    "ProxyGroup": (
        "Settings of a proxy group (its `metadata.name`): the Envoys bootstrapped with "
        "`controlplane bootstrap --group NAME`. Optional: "
        "a group named by a Listener exists without one. `edge: true` marks proxies that "
        "face untrusted clients."
    ),
    "Rollout": (
        "Moves an upstream's traffic from one version to another step by step, waits "
        "until the fleet has ACKed each step, judges the new version on what the proxies "
        "report, and promotes it (its `active` becomes `to`) or rolls back. Phases: "
        "`Pending → Progressing ⇄ Paused → Promoting → Succeeded`, or `RollingBack → "
        "RolledBack`, or `Aborted`; `controlplane rollout status NAME` shows them."
    ),
}

FIELDS: dict[str, str] = {
    # envelope
    "_Resource.api_version": "Always `controlplane/v1`.",
    "_Resource.metadata": "The resource's identity.",
    "Metadata.name": "The resource's name, unique within its kind.",
    "Metadata.labels": "Free-form key/value pairs kept with the resource; the control "
                       "plane does not act on them.",
    # Listener
    "ListenerSpec.group": "The proxy group that gets this listener (Envoy's `node.cluster`, "
                          "`controlplane bootstrap --group`).",
    "ListenerSpec.port": "The TCP port the proxies listen on.",
    "ListenerSpec.address": "The IP address the proxies listen on.",
    "ListenerSpec.tls": "Serve TLS (and optionally require client certificates); plain "
                        "HTTP when absent.",
    "ListenerTLS.certificate": "Which certificate to serve: `auto` (the only value "
                               "supported) is one our CA issues for the group, over SDS, "
                               "rotated at about half its lifetime.",
    "ListenerTLS.mtls": "Require a client certificate issued by our CA.",
    "ListenerTLS.allowed_groups": "With `mtls`: accept only client certificates of these "
                                  "proxy groups (any node of them).",
    "ListenerTLS.allowed_subject_alt_names": "With `mtls`: accept only client certificates "
                                             "carrying one of these exact DNS names or URIs.",
    # Route
    "RouteSpec.listener": "The Listener whose requests this route matches.",
    "RouteSpec.hosts": "Host names (Envoy virtual host domains) the route matches: exact, "
                       "`*.example.com`, or `*` for any.",
    "RouteSpec.prefix": "Path prefix the route matches; starts with `/`.",
    "RouteSpec.upstream": "The Upstream that gets the matched requests.",
    # Upstream
    "UpstreamSpec.active": "The version that takes all traffic when no rollout runs; must "
                           "be a key of `versions`. While a rollout of this upstream runs, "
                           "it owns `active` and an apply that changes it is refused.",
    "UpstreamSpec.versions": "Version name → where it runs. Each version becomes an Envoy "
                             "cluster named `upstream|version`.",
    "UpstreamSpec.health_check": "Active HTTP health checks Envoy runs on every endpoint "
                                 "(also of versions without traffic yet). The `bluegreen` "
                                 "and `rolling` strategies need it.",
    "UpstreamSpec.outlier_detection": "Eject endpoints that keep answering 5xx.",
    "UpstreamSpec.circuit_breakers": "Envoy's per-cluster limits on connections and "
                                     "requests.",
    "UpstreamSpec.retries": "Retry policy of the routes to this upstream.",
    "UpstreamSpec.timeout": "Time Envoy waits for the whole response (route timeout).",
    "UpstreamSpec.connect_timeout": "Time Envoy waits for a TCP connection to an endpoint.",
    "UpstreamSpec.rate_limit": "A local token bucket on every route to this upstream, per "
                               "proxy (Envoy's local rate limit); over it, Envoy answers 429.",
    "VersionSpec.endpoints": "`HOST:PORT`: an IP (IPv6 as `[::1]:8080`) or a DNS name "
                             "(RFC 1123), mixed freely. The control plane resolves names "
                             "(A and AAAA, at the record's TTL within 1-30 s) and sends "
                             "the addresses over EDS; a name that stops resolving keeps "
                             "its last addresses. At least one, unless `endpointsFrom` "
                             "is given. README, Where endpoints come from.",
    "VersionSpec.endpoints_from": "Endpoints that come and go, held by leases, beside "
                                  "`endpoints` (which may then be empty): `etcd: PREFIX` "
                                  "and/or `registered: true`. README, Where endpoints "
                                  "come from.",
    "EndpointsFrom.etcd": "A key prefix in the control plane's etcd (as given, outside "
                          "`/controlplane`): every key under it in etcd's naming format "
                          "(`{\"Op\":0,\"Addr\":\"IP:PORT\"}`, as `etcdctl put --lease` or "
                          "go.etcd.io/etcd/client/v3/naming/endpoints write it) is an "
                          "endpoint, watched by the leader: a key added, deleted or expired "
                          "reaches the proxies within a second. Other values are skipped "
                          "with one warning naming the key.",
    "EndpointsFrom.registered": "Let `controlplane endpoint register` (operator role) add "
                                "endpoints to this version, each held by the command's "
                                "lease.",
    "VersionSpec.credential": "A Credential whose header Envoy adds to every request to "
                              "this version.",
    "VersionSpec.tls": "Connect to this version's endpoints over TLS (upstream mTLS).",
    "UpstreamTLS.client_certificate": "`auto`: present the proxy group's certificate from "
                                      "our CA (over SDS); `none`: one-way TLS.",
    "UpstreamTLS.sni": "Server name sent in the TLS handshake.",
    "UpstreamTLS.ca_file": "Absolute path of a PEM bundle on the proxy's host to verify the "
                           "upstream against, instead of our CA.",
    "UpstreamTLS.subject_alt_names": "Require the upstream's certificate to carry one of "
                                     "these names (DNS names, or URIs such as `spiffe://...`).",
    "HealthCheck.path": "HTTP path Envoy requests; any 2xx answer counts as healthy. The "
                        "upstream must answer it, or Envoy routes in panic mode and "
                        "health-gated rollouts wait.",
    "HealthCheck.interval": "Time between checks of one endpoint.",
    "HealthCheck.timeout": "Time a check may take before it counts as failed.",
    "HealthCheck.unhealthy_threshold": "Failed checks in a row that mark an endpoint "
                                       "unhealthy.",
    "HealthCheck.healthy_threshold": "Passed checks in a row that mark it healthy again.",
    "OutlierDetection.consecutive5xx": "5xx answers in a row that eject an endpoint.",
    "OutlierDetection.interval": "Time between ejection sweeps.",
    "OutlierDetection.base_ejection_time": "How long an ejection lasts (times the number "
                                           "of ejections so far).",
    "OutlierDetection.max_ejection_percent": "The most endpoints of a version that may be "
                                             "ejected at once, in percent.",
    "CircuitBreakers.max_connections": "Connections to all endpoints of a version.",
    "CircuitBreakers.max_pending_requests": "Requests waiting for a connection.",
    "CircuitBreakers.max_requests": "Requests in flight.",
    "CircuitBreakers.max_retries": "Retries in flight.",
    "Retries.attempts": "Retries after the first try (0 turns retries off).",
    "Retries.on": "Comma-separated Envoy `retry_on` conditions, e.g. "
                  "`5xx,reset,connect-failure`.",
    "Retries.per_try_timeout": "Time one try may take; unset: only `timeout` bounds them.",
    "RateLimit.requests_per_second": "Tokens added to the bucket every second.",
    "RateLimit.burst": "Size of the bucket; unset: `requestsPerSecond`.",
    # Credential
    "CredentialSpec.header": "The HTTP header Envoy sets, e.g. `x-api-key` or "
                             "`Authorization`.",
    "CredentialSpec.value": "The value inline. Stored sealed, never printed. Set exactly "
                            "one of `value` and `valueFrom`.",
    "CredentialSpec.value_from": "Read the value from a file on the control plane's host.",
    "ValueFrom.file": "Path of a file inside a directory given to `serve "
                      "--credentials-dir` (none by default: then every file is refused); "
                      "its content, trailing newline stripped, is the value.",
    # ProxyGroup
    "ProxyGroupSpec.description": "What the group is, for people.",
    "ProxyGroupSpec.edge": "Apply Envoy's edge-proxy hardening to the group's listeners "
                           "and clusters: client headers not trusted, buffer limits, "
                           "timeouts, HTTP/2 limits. Use `bootstrap --edge` for its "
                           "proxies too.",
    # Rollout
    "RolloutSpec.upstream": "The Upstream whose traffic moves.",
    "RolloutSpec.from_": "The version traffic moves from: the upstream's `active` (omit "
                         "it and apply fills it in; another version is refused).",
    "RolloutSpec.to": "The version traffic moves to; a key of the upstream's `versions`.",
    "RolloutSpec.strategy": "`canary`: shift `steps` percent of requests; `bluegreen`: "
                            "preview `to` at 0% (through `match` or `mirror`), then switch "
                            "all at once when Envoy's health checks pass on every `to` "
                            "endpoint; `rolling`: replace `from` endpoints with `to` "
                            "endpoints in batches of `steps` percent; "
                            "`mirror-then-canary`: shadow traffic to `to` first, then canary.",
    "RolloutSpec.steps": "Percent of traffic on `to` at each step, strictly increasing, "
                         "0-100 (`bluegreen` ignores it).",
    "RolloutSpec.step_interval": "Time each step runs (and is judged by `analysis`) "
                                 "before the next.",
    "RolloutSpec.match": "A/B: requests that match always go to `to` while the rollout "
                         "runs.",
    "RolloutSpec.mirror": "Shadow traffic: copy requests to `to` while it takes none "
                          "(answers are discarded).",
    "RolloutSpec.analysis": "Judge `to` at each step on what the proxies report; without "
                            "it, steps advance after `stepInterval` once ACKed.",
    "RolloutSpec.rollback_window": "After success, `from` stays configured (at 0%) and "
                                   "its credential valid this long, so that `rollout "
                                   "rollback` is one route change.",
    "RolloutSpec.allow_empty_fleet": "Count a step as applied when no proxy of the groups "
                                     "that route to the upstream is connected. Off: such a "
                                     "step waits, and pauses after `ackTimeout`.",
    "Match.headers": "Header name → exact value; all must match.",
    "Match.cookie": "A cookie as `name=value`, e.g. `canary=1`.",
    "Mirror.percent": "Share of requests copied to `to`, in percent.",
    "Analysis.provider": "Where the numbers come from: `envoy` (the stats the proxies push "
                         "to the control plane, summed over the fleet) or `prometheus`.",
    "Analysis.prometheus": "With `provider: prometheus`: the server and the queries.",
    "Analysis.min_requests": "Fewer requests to `to` since the step makes the check "
                             "inconclusive.",
    "Analysis.success_rate": "The lowest acceptable `1 - 5xx ratio` of `to`.",
    "Analysis.p99_latency_ms": "The highest acceptable p99 latency of `to`, in "
                               "milliseconds; unset: not checked.",
    "Analysis.auth_failure_rate": "The highest acceptable 401/403 ratio of `to`; unset: "
                                  "not checked.",
    "Analysis.failure_limit": "Failed checks in a row that roll the rollout back.",
    "Analysis.inconclusive": "What a check without enough data (or a provider error) "
                             "does: `pause`, `continue` or `rollback`.",
    "PrometheusQueries.url": "Base URL of the Prometheus server.",
    "PrometheusQueries.queries": "PromQL templates that each return one number, over "
                                 "`${cluster}` (`upstream|version`), `${upstream}`, "
                                 "`${version}` and `${window}` (time since the step); "
                                 "the ones given replace the defaults.",
    "PrometheusQueries.timeout": "Time one query may take; longer is inconclusive.",
}

DEFAULTS: dict[str, str] = {
    "RolloutSpec.from_": "the upstream's `active`",
}
"""Defaults shown in words where the model's own value would mislead."""

EXAMPLES: dict[str, str] = {
    "Listener": """\
apiVersion: controlplane/v1
kind: Listener
metadata: {name: edge-http}
spec:
  group: edge
  port: 10000
---
apiVersion: controlplane/v1
kind: Listener
metadata: {name: edge-https}
spec:
  group: edge
  port: 10443
  tls: {certificate: auto, mtls: true, allowedGroups: [mesh]}
""",
    "Route": """\
apiVersion: controlplane/v1
kind: Route
metadata: {name: payments}
spec:
  listener: edge-http
  hosts: ["*"]
  prefix: /
  upstream: payments
""",
    "Upstream": """\
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec:
  active: v1
  versions:
    v1: {endpoints: ["127.0.0.1:9001"], credential: payments-key-2025}
    v2: {endpoints: ["127.0.0.1:9002"], credential: payments-key-2026}
  healthCheck: {path: /healthz, interval: 5s, unhealthyThreshold: 3}
  outlierDetection: {consecutive5xx: 5, interval: 10s, baseEjectionTime: 30s}
  circuitBreakers: {maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024}
  retries: {attempts: 2, on: "5xx,reset,connect-failure"}
  timeout: 5s
  rateLimit: {requestsPerSecond: 500, burst: 1000}
""",
    "Credential": """\
apiVersion: controlplane/v1
kind: Credential
metadata: {name: payments-key-2025}
spec:
  header: x-api-key
  value: "k-2025-0c1d"          # inline: sealed in etcd, printed as [redacted]
---
apiVersion: controlplane/v1
kind: Credential
metadata: {name: payments-key-2026}
spec:
  header: x-api-key
  valueFrom: {file: /run/secrets/payments-2026}   # needs serve --credentials-dir /run/secrets
""",
    "ProxyGroup": """\
apiVersion: controlplane/v1
kind: ProxyGroup
metadata: {name: edge}
spec:
  description: internet-facing proxies
  edge: true
""",
    "Rollout": """\
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: payments-v2}
spec:
  upstream: payments
  from: v1
  to: v2
  strategy: canary
  steps: [1, 5, 10, 25, 50, 100]
  stepInterval: 30s
  match: {headers: {x-canary: "true"}}
  analysis:
    minRequests: 50
    successRate: 0.99
    p99LatencyMs: 500
    authFailureRate: 0.001
    failureLimit: 2
    inconclusive: pause
  rollbackWindow: 1h
""",
}
"""One example per kind; together they are one valid apply (tests/feature checks it)."""
