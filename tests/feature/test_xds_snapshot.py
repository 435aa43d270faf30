"""Snapshots: content-hash versions, serialized once, consistency-checked.

The cache keeps the last good one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.errors import InconsistentSnapshotError
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from controlplane.xds.snapshot import EMPTY_VERSION, Snapshot
from tests.support.xds_resources import (
    eds_cluster,
    endpoints,
    http_listener,
    resources,
    route_config,
    simple_app,
)


def app(port: int = 9001) -> Snapshot:
    return Snapshot.build(simple_app(cluster="c1", upstream=("127.0.0.1", port),
                                     listener="http", listener_port=10000, route="r1"))


def test_equal_content_gives_equal_versions() -> None:
    assert app().versions == app().versions
    assert app().version(SECRET) == EMPTY_VERSION


def test_versions_are_the_same_in_another_process() -> None:
    code = (
        "from tests.support.xds_resources import simple_app;"
        "from controlplane.xds.snapshot import Snapshot;"
        "s = Snapshot.build(simple_app(cluster='c1', upstream=('127.0.0.1', 9001),"
        " listener='http', listener_port=10000, route='r1'));"
        "print(sorted(s.versions.items()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == str(sorted(app().versions.items()))


def test_a_changed_endpoint_changes_only_the_eds_version() -> None:
    before, after = app(9001), app(9002)
    changed = {t for t in before.versions if before.version(t) != after.version(t)}
    assert changed == {ENDPOINT}
    assert before.resources(ENDPOINT)["c1"].version != after.resources(ENDPOINT)["c1"].version


def test_order_of_input_does_not_matter() -> None:
    a = Snapshot.build(resources(clusters=[eds_cluster("x"), eds_cluster("y")],
                                 endpoints=[endpoints("x", []), endpoints("y", [])]))
    b = Snapshot.build(resources(clusters=[eds_cluster("y"), eds_cluster("x")],
                                 endpoints=[endpoints("y", []), endpoints("x", [])]))
    assert a.versions == b.versions and a.names(CLUSTER) == ["x", "y"]


def test_resources_are_serialized_once_and_shared() -> None:
    snap = app()
    entry = snap.resources(CLUSTER)["c1"]
    assert entry.resource.resource.value == entry.packed.value
    assert snap.resources(CLUSTER)["c1"] is entry
    assert snap.message(CLUSTER, "c1").name == "c1"


def test_every_consistency_problem_is_reported() -> None:
    bad = Snapshot.build(resources(
        clusters=[eds_cluster("c1"), eds_cluster("c2", service_name="svc")],
        endpoints=[endpoints("c1", [])],
        listeners=[http_listener("http", 10000, "missing-routes")],
        routes=[route_config("r1", {"c1": 50, "ghost": 50})],
    ))
    problems = bad.consistency_problems()
    assert problems == [
        "Cluster 'c2' references ClusterLoadAssignment 'svc', which the snapshot does not contain",
        "Listener 'http' references RouteConfiguration 'missing-routes', which the snapshot "
        "does not contain",
        "RouteConfiguration 'r1' references Cluster 'ghost', which the snapshot does not contain",
    ]
    with pytest.raises(InconsistentSnapshotError, match="3 problems"):
        bad.check()


def test_duplicates_and_wrong_types_are_refused() -> None:
    dup = Snapshot.build(resources(routes=[route_config("r", "x"), route_config("r", "y")],
                                   clusters=[]))
    assert any("appears twice" in p for p in dup.consistency_problems())
    with pytest.raises(InconsistentSnapshotError, match="got a"):
        Snapshot.build({LISTENER: [eds_cluster("c")]})
    with pytest.raises(InconsistentSnapshotError, match="not a served type"):
        Snapshot.build({"type.googleapis.com/foo.Bar": []})


def test_cache_rejects_inconsistent_and_keeps_last_good() -> None:
    cache = SnapshotCache()
    good = app()
    cache.set_snapshot("edge", good)
    bad = Snapshot.build(resources(listeners=[http_listener("http", 10000, "nope")]))
    with pytest.raises(InconsistentSnapshotError):
        cache.set_snapshot("edge", bad)
    assert cache.get("edge") is good
    cache.set_snapshot("edge", app())  # equal versions: the current object stays
    assert cache.get("edge") is good
    assert cache.groups() == ["edge"]
    assert ROUTE in good.versions


def test_a_snapshot_knows_what_changed_since_its_predecessor() -> None:
    before = Snapshot.build(resources(
        clusters=[eds_cluster("a"), eds_cluster("b"), eds_cluster("c")],
        endpoints=[endpoints(n, [("127.0.0.1", 1)]) for n in "abc"]))
    after = Snapshot.build(resources(
        clusters=[eds_cluster("a", service_name="a"), eds_cluster("c"), eds_cluster("d")],
        endpoints=[endpoints(n, [("127.0.0.1", 1)]) for n in "acd"]))
    assert after.changes_since(CLUSTER, before.version(CLUSTER)) is None  # not told yet
    after.note_predecessor(before)
    clusters = after.changes_since(CLUSTER, before.version(CLUSTER))
    assert clusters is not None
    assert (sorted(clusters.changed), sorted(clusters.removed)) == (["a", "d"], ["b"])
    eds = after.changes_since(ENDPOINT, before.version(ENDPOINT))
    assert eds is not None and (sorted(eds.changed), sorted(eds.removed)) == (["d"], ["b"])
    same = after.changes_since(CLUSTER, after.version(CLUSTER))
    assert same is not None and not same.changed and not same.removed
    assert after.changes_since(CLUSTER, "some-older-version") is None
