"""Responses assembled from pre-serialized parts are the bytes protobuf itself writes."""

from __future__ import annotations

import gc

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds import wire
from controlplane.xds.proxies import ProxyRegistry, TypeRecord
from controlplane.xds.resources import CLUSTER, ENDPOINT, ROUTE
from controlplane.xds.snapshot import Snapshot
from tests.support.xds_resources import eds_cluster, endpoints, resources


def _snapshot() -> Snapshot:
    return Snapshot.build(resources(
        clusters=[eds_cluster(f"c{i}") for i in range(3)],
        endpoints=[endpoints(f"c{i}", [("127.0.0.1", 9000 + i)]) for i in range(3)],
    ))


def test_a_sotw_body_with_its_nonce_is_the_response_protobuf_serializes() -> None:
    snapshot = _snapshot()
    for names in (None, frozenset({"c2", "c0", "missing"})):
        entries = snapshot.resources(CLUSTER)
        chosen = entries.values() if names is None else \
            [entries[n] for n in sorted(names) if n in entries]
        expected = discovery_pb2.DiscoveryResponse(
            version_info=snapshot.version(CLUSTER), type_url=CLUSTER, nonce="17",
            resources=[e.packed for e in chosen])
        got = wire.with_nonce(snapshot.sotw_body(CLUSTER, names), "17")
        assert got == expected.SerializeToString(deterministic=True)
        assert snapshot.sotw_body(CLUSTER, names) is snapshot.sotw_body(CLUSTER, names)


def test_a_delta_response_is_the_response_protobuf_serializes() -> None:
    snapshot = _snapshot()
    entries = snapshot.resources(ENDPOINT)
    expected = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=snapshot.version(ENDPOINT), type_url=ENDPOINT, nonce="3",
        resources=[entries["c0"].resource, entries["c2"].resource],
        removed_resources=["gone", "never"])
    got = wire.delta_response(snapshot.version(ENDPOINT), ENDPOINT,
                              [snapshot.delta_resource(ENDPOINT, n) for n in ("c0", "c2")],
                              "3", ["gone", "never"])
    assert got == expected.SerializeToString(deterministic=True)


def test_an_empty_type_and_long_fields_encode_like_protobuf() -> None:
    snapshot = _snapshot()
    expected = discovery_pb2.DiscoveryResponse(
        version_info=snapshot.version(ROUTE), type_url=ROUTE, nonce="n" * 300)
    assert wire.with_nonce(snapshot.sotw_body(ROUTE, None), "n" * 300) == \
        expected.SerializeToString()


def test_the_serializer_passes_bytes_and_serializes_messages() -> None:
    message = discovery_pb2.DiscoveryResponse(version_info="1")
    assert wire.serialize(b"raw") == b"raw"
    assert wire.serialize(message) == message.SerializeToString()


def test_a_subscription_naming_far_more_than_exists_is_not_held_by_the_snapshot() -> None:
    snapshot = _snapshot()
    hostile = frozenset(f"missing-{i}" for i in range(5000))
    first = snapshot.sotw_body(CLUSTER, hostile)
    assert first == snapshot.sotw_body(CLUSTER, frozenset())  # nothing of it exists
    assert snapshot.sotw_body(CLUSTER, hostile) is not first  # serialized again, not kept
    legit = frozenset({"c1"})
    assert snapshot.sotw_body(CLUSTER, legit) is snapshot.sotw_body(CLUSTER, legit)


def test_the_registry_keeps_one_copy_of_equal_name_sets_while_they_are_used() -> None:
    registry = ProxyRegistry()
    a = registry.connect(node_id="a", group="g", protocol="sotw",
                         extensions=[f"envoy.ext.{i}" for i in range(500)])
    b = registry.connect(node_id="b", group="g", protocol="sotw",
                         extensions=[f"envoy.ext.{i}" for i in reversed(range(500))])
    assert a.extensions is b.extensions
    # What a stream does with a subscription: one shared set in its type's record.
    a.types[ENDPOINT] = TypeRecord(wildcard=False, names=registry.shared(frozenset(["c1", "c2"])))
    b.types[ENDPOINT] = TypeRecord(wildcard=False, names=registry.shared(frozenset(("c2", "c1"))))
    assert a.types[ENDPOINT].names is b.types[ENDPOINT].names
    assert registry.list()[1].type(ENDPOINT).resource_names == ("c1", "c2")
    a.close()
    b.close()
    del a, b
    gc.collect()
    assert len(registry._shared) == 0  # nothing outlives the proxies that used it
