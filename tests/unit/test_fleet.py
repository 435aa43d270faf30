"""Fleet progress from replicas' reports: who carries the config a state implies."""

from __future__ import annotations

from controlplane.fleet import ProxyReport, decode, encode, groups_routing_to, progress_of
from controlplane.model import DesiredState, parse_yaml
from controlplane.rollout.traffic import traffic_of
from controlplane.translate import translate
from controlplane.xds.snapshot import Snapshot

STATE = DesiredState.of(parse_yaml("""
apiVersion: controlplane/v1
kind: Listener
metadata: {name: edge-http}
spec: {group: edge, port: 10000}
---
apiVersion: controlplane/v1
kind: Listener
metadata: {name: other}
spec: {group: other, port: 10001}
---
apiVersion: controlplane/v1
kind: Route
metadata: {name: payments}
spec: {listener: edge-http, upstream: payments}
---
apiVersion: controlplane/v1
kind: Upstream
metadata: {name: payments}
spec:
  active: v1
  versions: {v1: {endpoints: ["127.0.0.1:1"]}, v2: {endpoints: ["127.0.0.1:2"]}}
---
apiVersion: controlplane/v1
kind: Rollout
metadata: {name: r}
spec: {upstream: payments, from: v1, to: v2}
"""))


def expected(group: str) -> dict[str, str]:
    rs = translate(STATE, group=group, traffic=traffic_of(STATE))
    return dict(Snapshot.build(rs.by_type_url()).versions)


def test_only_groups_that_route_to_the_upstream_count() -> None:
    assert groups_routing_to(STATE, "payments") == ["edge"]
    reports = [ProxyReport("e1", "edge", 1.0, acked=expected("edge")),
               ProxyReport("o1", "other", 1.0, acked={})]
    assert progress_of(STATE, "r", reports).acked == 1
    assert progress_of(STATE, "r", reports).total == 1


def test_stale_versions_and_nacks() -> None:
    versions = expected("edge")
    stale = {k: "old" for k in versions}
    route_url = next(u for u in versions if u.endswith("RouteConfiguration"))
    reports = [
        ProxyReport("e1", "edge", 1.0, acked=versions),
        ProxyReport("e2", "edge", 1.0, acked=stale,
                    nacks={route_url: (versions[route_url], "weights must sum")}),
    ]
    progress = progress_of(STATE, "r", reports)
    assert (progress.acked, progress.total, progress.enough(1.0)) == (1, 2, False)
    assert progress.enough(0.5)
    assert progress.nack == "e2: weights must sum"


def test_a_proxy_that_moved_replica_counts_once_by_its_newest_stream() -> None:
    versions = expected("edge")
    reports = [ProxyReport("e1", "edge", 1.0, acked={k: "old" for k in versions}),
               ProxyReport("e1", "edge", 2.0, acked=versions)]
    progress = progress_of(STATE, "r", reports)
    assert (progress.acked, progress.total) == (1, 1)
    assert decode(encode(reports)) == reports
