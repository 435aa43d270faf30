"""The Prometheus analysis provider against Prometheus' HTTP query API: the PromQL it
sends, the verdicts it draws from the numbers, and inconclusive (never failed) when the
server is down, errs, or has no sample."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.analysis import FAILED, INCONCLUSIVE, PASSED
from controlplane.analysis.prometheus import PrometheusAnalysis, render, sample_of
from controlplane.errors import AnalysisProviderError, InvalidInputError
from controlplane.model import DesiredState, parse_yaml
from controlplane.model.status import Phase, RolloutStatus
from tests.support.ports import free_port
from tests.support.promapi import Answer, PromApi
from tests.support.states import PAYMENTS_EDGE


def _state(url: str, queries: str = "") -> DesiredState:
    state = DesiredState.of(parse_yaml(PAYMENTS_EDGE + f"""---
apiVersion: controlplane/v1
kind: Rollout
metadata: {{name: payments-v2}}
spec:
  upstream: payments
  from: v1
  to: v2
  analysis:
    provider: prometheus
    prometheus: {{url: "{url}", timeout: 2s{queries}}}
    minRequests: 10
    successRate: 0.95
    p99LatencyMs: 500
"""))
    return state.with_status("payments-v2", RolloutStatus(Phase.PROGRESSING, 0, 10.0,
                                                          applied=True, since=1000.0))


def _numbers(requests: float | None, errors: float = 0, auth: float = 0,
             p99: float | None = 20) -> Answer:
    def answer(query: str) -> float | None:
        if "payments|v1" in query:  # `from` is healthy: whatever happens is v2's
            return 20 if "histogram_quantile" in query else 0 if "code" in query else 500
        if "histogram_quantile" in query:
            return p99
        if "401|403" in query:
            return auth
        if 'envoy_response_code_class="5"' in query:
            return errors
        return requests
    return answer


def _check(state: DesiredState, now: float = 1030.0) -> tuple[str, str]:
    check = asyncio.run(PrometheusAnalysis().check(state, "payments-v2", now))
    return check.verdict, check.detail


@pytest.mark.parametrize(("answer", "verdict", "words"), [
    (_numbers(200), PASSED, "200 requests"),
    (_numbers(200, errors=30), FAILED, "successRate 0.850"),
    (_numbers(200, p99=900), FAILED, "p99 latency 900 ms"),
    (_numbers(5), INCONCLUSIVE, "fewer than minRequests"),
    (_numbers(None), INCONCLUSIVE, "no data"),
    (lambda q: "parse error at char 3", INCONCLUSIVE, "bad_data: parse error"),
])
def test_verdicts_from_prometheus_numbers(answer: Answer, verdict: str, words: str) -> None:
    with PromApi(answer) as prom:
        got, detail = _check(_state(prom.url))
    assert got == verdict and words in detail, detail


def test_queries_name_the_version_cluster_and_the_window_since_the_step() -> None:
    with PromApi(_numbers(100)) as prom:
        _check(_state(prom.url, ', queries: {requests: "sum(my_rq{svc=\\"${upstream}\\", '
                                 'v=\\"${version}\\"}[${window}])"}'))
    assert 'sum(my_rq{svc="payments", v="v2"}[30s])' in prom.queries  # a user's template
    assert any('envoy_cluster_name="payments|v2"' in q and "[30s]" in q
               for q in prom.queries)  # the defaults for the rest


def test_a_failure_of_both_versions_is_blamed_on_neither() -> None:
    with PromApi(lambda q: 20 if "histogram" in q else 50 if "code" in q else 100) as prom:
        verdict, detail = _check(_state(prom.url))
    assert verdict == INCONCLUSIVE and "v1 fails as well" in detail


def test_an_unreachable_prometheus_is_inconclusive_not_a_failure() -> None:
    verdict, detail = _check(_state(f"http://127.0.0.1:{free_port()}"))
    assert verdict == INCONCLUSIVE and "unreachable" in detail


def test_sample_of_reads_scalars_and_rejects_many_series() -> None:
    assert sample_of(b'{"status":"success","data":{"resultType":"scalar",'
                     b'"result":[0,"3.5"]}}') == 3.5
    assert sample_of(b'{"status":"success","data":{"resultType":"vector",'
                     b'"result":[{"value":[0,"NaN"]}]}}') is None
    with pytest.raises(AnalysisProviderError, match="2 series"):
        sample_of(b'{"status":"success","data":{"resultType":"vector","result":'
                  b'[{"value":[0,"1"]},{"value":[0,"2"]}]}}')
    assert render("x{c=\"${cluster}\"}[${window}]", upstream="u", version="v",
                  window_s=0.2) == 'x{c="u|v"}[1s]'


def test_unknown_placeholders_are_rejected_at_apply() -> None:
    with pytest.raises(InvalidInputError, match=r"spec\.analysis\.prometheus\.queries.*"
                       r"unknown placeholder\(s\) \['windw'\]"):
        _state("http://prom:9090", ', queries: {requests: "sum(x[${windw}])"}')
