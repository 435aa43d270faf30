"""Judge a version's counts over a window against a Rollout's `analysis` thresholds.

Pure. Too little traffic is inconclusive ("no data"), never a failure: the rollout's
`inconclusive` policy decides what that means.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from controlplane.analysis.window import Counts
from controlplane.model.resources import Analysis

PASSED = "passed"
FAILED = "failed"
INCONCLUSIVE = "inconclusive"

CLUSTER_SEPARATOR = "|"


def version_cluster(upstream: str, version: str) -> str:
    """The Envoy cluster of one upstream version (as translate.names.cluster_name names it)."""
    return f"{upstream}{CLUSTER_SEPARATOR}{version}"


@dataclass(frozen=True)
class Check:
    """One analysis check of a rollout's `to` version, with its numbers and thresholds."""

    at: float
    version: str
    verdict: str
    detail: str
    start: float
    requests: int
    success_rate: float | None
    p99_latency_ms: float | None
    auth_failure_rate: float | None
    thresholds: dict[str, float | None]

    def document(self) -> dict[str, Any]:
        """The `lastCheck` object of `rollout status -o json` (JSON-safe)."""
        doc = asdict(self)
        if doc["p99_latency_ms"] is not None and math.isinf(doc["p99_latency_ms"]):
            doc["p99_latency_ms"] = None
        return {
            "at": doc["at"], "version": doc["version"], "verdict": doc["verdict"],
            "detail": doc["detail"], "windowStart": doc["start"], "requests": doc["requests"],
            "successRate": doc["success_rate"], "p99LatencyMs": doc["p99_latency_ms"],
            "authFailureRate": doc["auth_failure_rate"], "thresholds": doc["thresholds"],
        }


def thresholds_of(analysis: Analysis) -> dict[str, float | None]:
    return {"minRequests": analysis.min_requests, "successRate": analysis.success_rate,
            "p99LatencyMs": analysis.p99_latency_ms,
            "authFailureRate": analysis.auth_failure_rate}


def evaluate(analysis: Analysis, counts: Counts, *, version: str, start: float,
             now: float) -> Check:
    """The verdict on `counts` (of `version`, received in [start, now])."""
    n = counts.requests
    limits = thresholds_of(analysis)
    if n <= 0 or n < analysis.min_requests:
        return Check(now, version, INCONCLUSIVE,
                     f"no data: {n} request(s) to {version} since the step, "
                     f"fewer than minRequests {analysis.min_requests}",
                     start, n, None, None, None, limits)
    success = 1 - counts.server_errors / n
    auth = counts.auth_failures / n
    p99 = counts.quantile_ms(0.99)
    problems = []
    if success < analysis.success_rate:
        problems.append(f"successRate {success:.3f} < {analysis.success_rate:g} "
                        f"({counts.server_errors} 5xx of {n})")
    if analysis.p99_latency_ms is not None and p99 is not None and p99 > analysis.p99_latency_ms:
        problems.append(f"p99 latency {p99:g} ms > {analysis.p99_latency_ms:g} ms")
    if analysis.auth_failure_rate is not None and auth > analysis.auth_failure_rate:
        problems.append(f"authFailureRate {auth:.3f} > {analysis.auth_failure_rate:g} "
                        f"({counts.auth_failures} 401/403 of {n})")
    numbers = (f"{version}: {n} requests, successRate {success:.3f}, "
               f"p99 {'n/a' if p99 is None else f'{p99:g} ms'}, authFailureRate {auth:.3f}")
    if problems:
        return Check(now, version, FAILED, f"{'; '.join(problems)} [{numbers}]",
                     start, n, success, p99, auth, limits)
    return Check(now, version, PASSED, numbers, start, n, success, p99, auth, limits)


def judge(analysis: Analysis, counts: Counts, baseline: Counts, *, version: str,
          baseline_version: str, start: float, now: float) -> Check:
    """The verdict on `version`, compared with `baseline_version` over the same window:
    when the baseline fails the same thresholds, the trouble is fleet-wide (a shared
    dependency, the network), not the new version's, so the check is inconclusive."""
    check = evaluate(analysis, counts, version=version, start=start, now=now)
    if check.verdict != FAILED:
        return check
    other = evaluate(analysis, baseline, version=baseline_version, start=start, now=now)
    if other.verdict != FAILED:
        return check
    return Check(check.at, check.version, INCONCLUSIVE,
                 f"{baseline_version} fails as well, a fleet-wide problem rather than "
                 f"{version}'s: {check.detail}; {other.detail}",
                 check.start, check.requests, check.success_rate, check.p99_latency_ms,
                 check.auth_failure_rate, check.thresholds)
