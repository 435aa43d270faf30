"""The second analysis provider: PromQL against a Prometheus that already scrapes the
Envoys (`analysis.provider: prometheus`), for users who have one.

The queries (`analysis.prometheus.queries`, defaults in the model) are templates over
`${cluster}`, `${upstream}`, `${version}` and `${window}`; each must return one number
(an instant vector with one sample, or a scalar). An unreachable server, an error, or
no sample is *inconclusive*, never a failure: the rollout's `inconclusive` policy decides.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from string import Template

from controlplane.analysis.decide import (
    INCONCLUSIVE,
    Check,
    judge,
    thresholds_of,
    version_cluster,
)
from controlplane.analysis.window import Counts
from controlplane.errors import AnalysisProviderError
from controlplane.model import DesiredState
from controlplane.model.resources import Analysis, PrometheusQueries


def render(template: str, *, upstream: str, version: str, window_s: float) -> str:
    """A query template with its placeholders filled in."""
    return Template(template).substitute(
        cluster=version_cluster(upstream, version), upstream=upstream, version=version,
        window=f"{max(1, math.ceil(window_s))}s")


def sample_of(body: bytes) -> float | None:
    """The one number of a /api/v1/query answer (None: no sample, or NaN).

    Errors:
        AnalysisProviderError: the answer is an error, or not one number.
    """
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise AnalysisProviderError(f"not a Prometheus answer: {exc}") from exc
    if doc.get("status") != "success":
        raise AnalysisProviderError(f"{doc.get('errorType', 'error')}: {doc.get('error', doc)}")
    data = doc.get("data", {})
    result = data.get("result")
    if data.get("resultType") == "scalar":
        value = result[1]
    elif data.get("resultType") == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise AnalysisProviderError(f"{len(result)} series; the query must sum to one")
        value = result[0]["value"][1]
    else:
        raise AnalysisProviderError(f"unexpected result type {data.get('resultType')!r}")
    number = float(value)
    return None if math.isnan(number) else number


class PrometheusAnalysis:
    """AnalysisProvider over a Prometheus HTTP API."""

    async def check(self, state: DesiredState, rollout: str, now: float) -> Check:
        spec = state.rollouts[rollout].spec
        analysis = spec.analysis
        assert analysis is not None and analysis.prometheus is not None, "validated by model"
        settings, start = analysis.prometheus, state.status(rollout).since

        def both() -> tuple[Counts | None, Counts | None]:
            return (self._counts(settings, spec.upstream, spec.to, now - start, now),
                    self._counts(settings, spec.upstream, spec.from_, now - start, now))

        try:
            counts, baseline = await asyncio.to_thread(both)
        except AnalysisProviderError as exc:
            return _inconclusive(analysis, spec.to, start, now, f"prometheus: {exc}")
        if counts is None:
            return _inconclusive(analysis, spec.to, start, now,
                                 f"no data: prometheus has no requests to {spec.to}")
        return judge(analysis, counts, baseline or Counts(), version=spec.to,
                     baseline_version=spec.from_, start=start, now=now)

    def _counts(self, settings: PrometheusQueries, upstream: str, version: str,
                window_s: float, now: float) -> Counts | None:
        """One version's numbers as Counts (None: Prometheus has no request count)."""
        numbers = self._query_all(settings, upstream, version, window_s, now)
        requests = numbers.get("requests")
        if requests is None:
            return None
        n = round(requests)
        counts = Counts(requests=n, server_errors=round(numbers.get("errors") or 0),
                        auth_failures=round(numbers.get("authFailures") or 0))
        p99 = numbers.get("p99LatencyMs")
        if p99 is not None and n > 0:
            counts.latency, counts.latency_samples = {p99: n}, n  # one bucket: p99 itself
        return counts

    def _query_all(self, settings: PrometheusQueries, upstream: str, version: str,
                   window_s: float, now: float) -> dict[str, float | None]:
        timeout = settings.timeout.seconds
        return {name: self._query(settings.url, render(template, upstream=upstream,
                                                       version=version, window_s=window_s),
                                  now, timeout)
                for name, template in settings.queries.items()}

    @staticmethod
    def _query(url: str, query: str, now: float, timeout: float) -> float | None:
        params = urllib.parse.urlencode({"query": query, "time": f"{now:.3f}"})
        try:
            with urllib.request.urlopen(f"{url}/api/v1/query?{params}",
                                        timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:  # Prometheus answers 400/422 with a JSON error
            body = exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise AnalysisProviderError(f"{url} unreachable: {exc}") from exc
        return sample_of(body)


def _inconclusive(analysis: Analysis, version: str, start: float, now: float,
                  detail: str) -> Check:
    return Check(now, version, INCONCLUSIVE, detail, start, 0, None, None, None,
                 thresholds_of(analysis))
