"""Values Envoy would refuse, or could not use, found before they reach a proxy.

Envoy checks its config with protoc-gen-validate rules; one bad field NACKs the whole
response for the group (every cluster of a CDS update, say), and a value Envoy accepts
but cannot send (a header value with a line break) breaks traffic instead. The rules
here are Envoy's own, from the `validate.rules` of the fields our translator fills
(xds-protos), plus what HTTP lets a request carry:

- HTTP_HEADER_NAME (strict): an RFC 9110 token (`Generic.header`, `HeaderMatcher.name`).
- HTTP_HEADER_VALUE (strict): no control character but HTAB
  (`HttpHealthCheck.path`); Envoy's codecs refuse NUL, CR and LF in any header value.
- `UpstreamTlsContext.sni`: at most 255 bytes; it is a DNS host name (RFC 6066).
- A request path (route prefix, health-check path) carries printable ASCII only:
  anything else is percent-encoded by clients, so a raw one never matches, or is
  refused by the upstream.
- Durations Envoy requires `gt: {}` (a cluster's connect timeout, a health check's
  timeout and interval, outlier detection's interval and ejection time) are at least
  1ms, what the translator keeps; no duration exceeds protobuf's Duration range.
- Counts the translator puts in `UInt32Value`s fit in 32 bits.

They are rules of the desired state (`DesiredState.problems`), not of the models, so
a resource stored before a rule existed still loads and is named until it is fixed.
What apply cannot know (a `caFile` missing on the proxy's host) shows as a NACK,
traced to the resource by `translate.trace`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from controlplane.errors import FieldError
from controlplane.model.duration import Duration
from controlplane.model.resources import Credential, Route, Upstream, UpstreamSpec, UpstreamTLS

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What Envoy's strict HTTP_HEADER_VALUE refuses: control characters but HTAB."""
_PATH = re.compile(r"^/[!-~]*$")
"""A request path: `/`, then printable ASCII without spaces."""
_DNS_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
MAX_SNI_BYTES = 253
"""A DNS name's limit (Envoy's `sni` rule allows 255, DNS no more than 253)."""
MAX_DURATION_S = 315_576_000_000
"""google.protobuf.Duration's range (10,000 years)."""
MAX_UINT32 = 2**32 - 1


def control_problem(value: str) -> str | None:
    """Why `value` cannot be an HTTP header value (or a line of config), or None."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    return (f"holds the control character {found.group()!r} (NUL, CR, LF and other control "
            "characters but tab cannot be sent in HTTP; Envoy refuses them)")


def path_problem(path: str) -> str | None:
    """Why `path` cannot be (the start of) a request path Envoy matches or sends, or None."""
    control = control_problem(path)
    if control is not None:
        return control
    if not _PATH.match(path):
        return (f"{path!r} is not a request path: start with '/' and use printable ASCII "
                "without spaces (percent-encode others, e.g. %20)")
    if "#" in path:
        return f"{path!r} holds '#': a fragment is never sent to a server"
    return None


def host_name_problem(name: str) -> str | None:
    """Why `name` is not a DNS host name (what an SNI carries), or None."""
    control = control_problem(name)
    if control is not None:
        return control
    if len(name.encode()) > MAX_SNI_BYTES:
        return f"is {len(name.encode())} bytes; a DNS name has at most {MAX_SNI_BYTES}"
    if not all(_DNS_LABEL.match(label) for label in name.split(".")):
        return (f"{name!r} is not a DNS host name (labels of letters, digits and '-', "
                "separated by dots, e.g. payments.internal)")
    return None


def credential_value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a credential header's value, or None.

    Whitespace at either end is dropped by the upstream's HTTP parser (RFC 9110 5.5),
    so the upstream would see another credential than the one stored.
    """
    control = control_problem(value)
    if control is not None:
        return control
    if value != value.strip(" \t"):
        return ("starts or ends with whitespace, which HTTP drops: the upstream would "
                "receive a different value")
    return None


def envoy_problems(routes: Iterable[Route], upstreams: Iterable[Upstream],
                   credentials: Iterable[Credential]) -> list[FieldError]:
    """Every field of these resources whose value Envoy would refuse or cannot use."""
    errors: list[FieldError] = []
    for route in routes:
        why = path_problem(route.spec.prefix)
        if why:
            errors.append(FieldError(f"Route/{route.name}: spec.prefix", why))
    for upstream in upstreams:
        errors.extend(_upstream_problems(upstream))
    for credential in credentials:
        value = credential.spec.value
        why = None if value is None else credential_value_problem(value.get_secret_value())
        if why:
            # Never echo the value: the reason names the character class only.
            errors.append(FieldError(f"Credential/{credential.name}: spec.value", why))
        source = credential.spec.value_from
        why = None if source is None else control_problem(source.file)
        if why:
            errors.append(FieldError(f"Credential/{credential.name}: spec.valueFrom.file", why))
    return errors


def _upstream_problems(upstream: Upstream) -> list[FieldError]:
    errors: list[FieldError] = []
    where = f"Upstream/{upstream.name}: spec"
    check = upstream.spec.health_check
    if check is not None:
        why = path_problem(check.path)
        if why:
            errors.append(FieldError(f"{where}.healthCheck.path", why))
    for version, spec in upstream.spec.versions.items():
        if spec.tls is not None:
            errors.extend(_tls_problems(f"{where}.versions.{version}.tls", spec.tls))
    errors.extend(FieldError(f"{where}.{name}", why) for name, why in _number_problems(
        upstream.spec))
    return errors


def _number_problems(spec: UpstreamSpec) -> list[tuple[str, str]]:
    """(field, why) for durations and counts of `spec` Envoy cannot take."""
    positive: list[tuple[str, Duration]] = [("connectTimeout", spec.connect_timeout)]
    durations: list[tuple[str, Duration]] = [("timeout", spec.timeout)]
    counts: list[tuple[str, int | None]] = []
    if spec.health_check is not None:
        check = spec.health_check
        positive += [("healthCheck.timeout", check.timeout),
                     ("healthCheck.interval", check.interval)]
        counts += [("healthCheck.unhealthyThreshold", check.unhealthy_threshold),
                   ("healthCheck.healthyThreshold", check.healthy_threshold)]
    if spec.outlier_detection is not None:
        outlier = spec.outlier_detection
        positive += [("outlierDetection.interval", outlier.interval),
                     ("outlierDetection.baseEjectionTime", outlier.base_ejection_time)]
        counts.append(("outlierDetection.consecutive5xx", outlier.consecutive5xx))
    if spec.retries is not None and spec.retries.per_try_timeout is not None:
        durations.append(("retries.perTryTimeout", spec.retries.per_try_timeout))
    if spec.circuit_breakers is not None:
        breakers = spec.circuit_breakers
        counts += [("circuitBreakers.maxConnections", breakers.max_connections),
                   ("circuitBreakers.maxPendingRequests", breakers.max_pending_requests),
                   ("circuitBreakers.maxRequests", breakers.max_requests),
                   ("circuitBreakers.maxRetries", breakers.max_retries)]
    if spec.rate_limit is not None:
        counts += [("rateLimit.requestsPerSecond", spec.rate_limit.requests_per_second),
                   ("rateLimit.burst", spec.rate_limit.burst)]
    out: list[tuple[str, str]] = []
    for name, text in positive + durations:
        seconds = text.seconds
        if seconds > MAX_DURATION_S:
            out.append((name, f"{text} is longer than a protobuf Duration holds "
                              f"({MAX_DURATION_S} s)"))
        elif (name, text) in positive and round(seconds * 1000) < 1:
            out.append((name, f"{text}: Envoy requires more than 0 (at least 1ms)"))
    out += [(name, f"{value} is over {MAX_UINT32}, Envoy's limit (a 32-bit count)")
            for name, value in counts if value is not None and value > MAX_UINT32]
    return out


def _tls_problems(where: str, tls: UpstreamTLS) -> list[FieldError]:
    errors: list[FieldError] = []
    if tls.sni is not None:
        why = host_name_problem(tls.sni)
        if why:
            errors.append(FieldError(f"{where}.sni", why))
    if tls.ca_file is not None:
        why = control_problem(tls.ca_file)
        if why:
            errors.append(FieldError(f"{where}.caFile", why))
    for i, name in enumerate(tls.subject_alt_names):
        if "://" in name:
            # A URI SAN (spiffe://...): matched exactly; it can hold no space or control.
            why = control_problem(name) or (
                f"{name!r} holds whitespace, which a URI cannot" if re.search(r"\s", name)
                else None)
        else:
            why = host_name_problem(name.removeprefix("*."))
        if why:
            errors.append(FieldError(f"{where}.subjectAltNames[{i}]", why))
    return errors
