"""Fleet progress from replicas' reports: who carries the config a state implies."""

from __future__ import annotations

import zlib
from types import MappingProxyType

from pydantic import SecretStr

from controlplane.fleet import (
    MAX_SHARD_BYTES,
    REPORT_SHARDS,
    ProxyReport,
    ReportEncoder,
    decode,
    encode,
    groups_routing_to,
    progress_of,
)
from controlplane.model import DesiredState, parse_yaml
from controlplane.publish import Publisher
from controlplane.rollout.engine import FleetProgress
from controlplane.rollout.traffic import traffic_of
from controlplane.secrets.ca import CertificateAuthority
from controlplane.stage import RenderStage
from controlplane.translate import GroupCertificate, SecretMaterial, translate
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.proxies import ProxyRegistry, TypeRecord
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.stream import MAX_IDENTITY_BYTES
from tests.support.states import with_rollout

OTHER = """---
apiVersion: controlplane/v1
kind: Listener
metadata: {name: other}
spec: {group: other, port: 10001}
"""
STATE = DesiredState.of(parse_yaml(with_rollout() + OTHER))


def expected(group: str) -> dict[str, str]:
    rs = translate(STATE, group=group, traffic=traffic_of(STATE))
    return dict(Snapshot.build(rs.by_type_url()).versions)


def test_only_groups_that_route_to_the_upstream_count() -> None:
    assert groups_routing_to(STATE, "payments") == ["edge"]
    reports = [ProxyReport("e1", "edge", 1.0, acked=expected("edge")),
               ProxyReport("o1", "other", 1.0, acked={})]
    assert progress_of(STATE, "payments-v2", reports).acked == 1
    assert progress_of(STATE, "payments-v2", reports).total == 1


def test_stale_versions_and_nacks() -> None:
    versions = expected("edge")
    stale = {k: "old" for k in versions}
    route_url = next(u for u in versions if u.endswith("RouteConfiguration"))
    reports = [
        ProxyReport("e1", "edge", 1.0, acked=versions),
        ProxyReport("e2", "edge", 1.0, acked=stale,
                    nacks={route_url: (versions[route_url], "weights must sum")}),
    ]
    progress = progress_of(STATE, "payments-v2", reports)
    assert (progress.acked, progress.total, progress.enough(1.0)) == (1, 2, False)
    assert progress.enough(0.5)
    assert progress.nack == "e2: weights must sum"


def test_a_proxy_that_moved_replica_counts_once_by_its_newest_stream() -> None:
    versions = expected("edge")
    reports = [ProxyReport("e1", "edge", 1.0, acked={k: "old" for k in versions}),
               ProxyReport("e1", "edge", 2.0, acked=versions)]
    progress = progress_of(STATE, "payments-v2", reports)
    assert (progress.acked, progress.total) == (1, 1)
    assert decode(encode(reports)) == reports


SECURED = DesiredState.of(parse_yaml(
    with_rollout().replace("spec: {group: edge, port: 10000}",
                           "spec: {group: edge, port: 10000, tls: {certificate: auto}}")
    .replace('v2: {endpoints: ["127.0.0.1:9002"]}',
             'v2: {endpoints: ["127.0.0.1:9002"], credential: key-2026}')
    + """---
apiVersion: controlplane/v1
kind: Credential
metadata: {name: key-2026}
spec: {header: x-api-key, value: not-for-versions}
"""))


def served_versions(state: DesiredState, value: str) -> dict[str, str]:
    """What a replica serves group `edge`: rendered with real key material (a CA of its
    own, the group's certificate, the credential's `value`), as the publisher does."""
    ca = CertificateAuthority.create(now=1_700_000_000)
    issued = ca.issue("edge", now=1_700_000_000, lifetime_s=3600)
    material = SecretMaterial(
        ca_pem=ca.cert_pem,
        certificates=MappingProxyType({"edge": GroupCertificate(issued.cert_pem,
                                                                issued.key_pem)}),
        credentials=MappingProxyType({"key-2026": SecretStr(value)}))
    return dict(RenderStage().snapshot(state, "edge", material).versions)


def test_groups_with_tls_and_credentials_are_compared_without_key_material() -> None:
    served = served_versions(SECURED, "first-value")
    rotated = served_versions(SECURED, "second-value")
    assert served[SECRET] != rotated[SECRET]  # the material is in the SDS version...
    for versions in (served, rotated):
        # ...and a leader that never held it (a fresh stage: stand-ins for the material)
        # still counts a proxy that ACKed everything a replica served, SDS included.
        report = ProxyReport("e1", "edge", 1.0, acked=versions)
        assert progress_of(SECURED, "payments-v2", [report]) == FleetProgress(
            1, 1, None, ("edge",))
    behind = ProxyReport("e1", "edge", 1.0, acked={**served, ROUTE: "old"})
    assert progress_of(SECURED, "payments-v2", [behind]).acked == 0


def test_the_sharded_report_matches_a_full_encoding_after_every_change() -> None:
    registry = ProxyRegistry()
    handles = [registry.connect(node_id=f"n{i}", group="edge", protocol="sotw")
               for i in range(12)]
    encoder = ReportEncoder(registry, shards=4)

    def shard(node_id: str) -> int:
        return zlib.crc32(node_id.encode()) % 4

    def full() -> dict[int, bytes]:
        by_shard: dict[int, list[ProxyReport]] = {}
        for h in registry.handles():
            by_shard.setdefault(shard(h.node_id), []).append(ProxyReport(
                h.node_id, h.group, h.connected_at, h.acked_versions(), h.nacks(),
                h.peer_serial))
        return {s: encode(reports) for s, reports in sorted(by_shard.items())}

    first = encoder.encode()
    assert len(first) > 1
    assert sorted(r.node_id for v in first.values() for r in decode(v)) == \
        sorted(f"n{i}" for i in range(12))
    handles[0].acked(ROUTE, "v1")
    after = encoder.encode()
    assert after == full()
    assert [s for s in after if after[s] != first[s]] == [shard("n0")]  # one shard moved
    handles[1].nacked(ROUTE, "v2", "bad route")
    handles[2].close()
    got = {r.node_id: r for v in encoder.encode().values() for r in decode(v)}
    assert encoder.encode() == full()
    assert "n2" not in got and got["n0"].acked == {ROUTE: "v1"}
    assert got["n1"].nacks == {ROUTE: ("v2", "bad route")}


def test_a_twin_node_id_in_another_group_does_not_hide_a_nack() -> None:
    versions = expected("edge")
    route_url = next(u for u in versions if u.endswith("RouteConfiguration"))
    reports = [
        ProxyReport("e1", "edge", 1.0, acked={k: "old" for k in versions},
                    nacks={route_url: (versions[route_url], "rejected")}),
        ProxyReport("e1", "other", 9.0, acked=expected("other")),  # newer, another group
    ]
    progress = progress_of(STATE, "payments-v2", reports)
    assert (progress.acked, progress.total, progress.nack) == (0, 1, "e1: rejected")


def test_a_stream_with_another_certificate_is_another_claimant_not_a_replacement() -> None:
    versions = expected("edge")
    route_url = next(u for u in versions if u.endswith("RouteConfiguration"))
    real = ProxyReport("e1", "edge", 1.0, acked={k: "old" for k in versions},
                       nacks={route_url: (versions[route_url], "rejected")}, serial="aa")
    forged = ProxyReport("e1", "edge", 9.0, acked=versions, serial="bb")
    progress = progress_of(STATE, "payments-v2", [real, forged])
    assert (progress.acked, progress.total, progress.nack) == (0, 1, "e1: rejected")
    # The same certificate's newer stream (the proxy moved replica) does replace it.
    moved = ProxyReport("e1", "edge", 9.0, acked=versions, serial="aa")
    assert progress_of(STATE, "payments-v2", [real, moved]) == FleetProgress(
        1, 1, None, ("edge",))


def test_an_empty_fleet_is_not_all_acked() -> None:
    progress = progress_of(STATE, "payments-v2", [ProxyReport("o1", "other", 1.0)])
    assert (progress.acked, progress.total, progress.groups) == (0, 0, ("edge",))
    assert progress.empty()
    assert not FleetProgress(0, 0).empty()  # no group routes there: nothing to carry


def test_progress_renders_a_state_once_however_often_it_is_asked() -> None:
    stage = RenderStage()
    stored = DesiredState.of(STATE.resources(), STATE.statuses, fingerprint="f1")
    reports = [ProxyReport("e1", "edge", 1.0, acked=expected("edge"))]
    for _ in range(5):
        assert progress_of(stored, "payments-v2", reports, stage).acked == 1
    assert stage.renders == 1
    moved = DesiredState.of(STATE.resources(), STATE.statuses, fingerprint="f2")
    progress_of(moved, "payments-v2", reports, stage)
    assert stage.renders == 2


def test_shards_stay_under_the_limit_at_10000_proxies_with_maximal_ids() -> None:
    registry = ProxyRegistry()
    handles = []
    for i in range(10_000):
        handle = registry.connect(node_id=f"{i:05d}".ljust(MAX_IDENTITY_BYTES, "\u00e9"[0]),
                                  group="g" * MAX_IDENTITY_BYTES, protocol="sotw",
                                  peer_serial="ab" * 20)
        for url in (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET):
            handle.acked(url, "0123456789abcdef")
            handle.nacked(url, "fedcba9876543210", "\u00e9" * 10_000)
        handle.types["type.example/" + "t" * 10_000] = TypeRecord()  # not reported
        handles.append(handle)
    encoder = ReportEncoder(registry)
    shards = encoder.encode()
    assert max(len(v) for v in shards.values()) <= MAX_SHARD_BYTES
    assert encoder.shards > REPORT_SHARDS
    assert sum(len(decode(v)) for v in shards.values()) == 10_000
    for handle in handles[100:]:
        handle.close()
    fewer = encoder.encode()
    assert encoder.shards == REPORT_SHARDS  # back down once they fit
    assert sorted(r.node_id for v in fewer.values() for r in decode(v)) == \
        sorted(h.node_id for h in handles[:100])


async def test_progress_compares_acks_with_the_render_the_publisher_served() -> None:
    stage, cache = RenderStage(), SnapshotCache()
    publisher = Publisher(cache, stage=stage)
    stored = DesiredState.of(STATE.resources(), STATE.statuses, fingerprint="f1")
    publisher.update(stored)
    publisher.publish_now()
    served = stage.renders
    assert served == len(stored.groups())
    served_versions = dict(cache.get("edge").versions)  # type: ignore[union-attr]
    reports = [ProxyReport("e1", "edge", 1.0, acked=served_versions)]
    assert progress_of(stored, "payments-v2", reports, stage).acked == 1
    assert stage.renders == served  # no translation of its own
