"""SotW ADS against a real grpc.aio server on port 0 with a real grpc.aio client."""

from __future__ import annotations

import pytest

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from controlplane.xds.snapshot import Snapshot
from tests.support.acks import wait_acked
from tests.support.ads import AdsClient, XdsHarness, node, xds_server
from tests.support.wait import wait_for
from tests.support.xds_resources import (
    eds_cluster,
    endpoints,
    generic_secret,
    http_listener,
    resources,
    route_config,
)

SILENCE = 0.5
"""How long "no response" is watched for: bounded, and far above a loopback round trip."""


def app(port: int = 9001, *, clusters: tuple[str, ...] = ("a", "b"), route: str = "r1") -> Snapshot:
    return Snapshot.build(
        resources(
            clusters=[eds_cluster(c) for c in clusters],
            endpoints=[endpoints(c, [("127.0.0.1", port)]) for c in clusters],
            listeners=[http_listener("http", 10000, route)],
            routes=[route_config(route, clusters[0])],
            secrets=[generic_secret("key-1", b"s1"), generic_secret("key-2", b"s2")],
        )
    )


@pytest.fixture
async def xds() -> XdsHarness:  # type: ignore[misc]
    async with xds_server() as harness:
        harness.cache.set_snapshot("edge", app())
        yield harness


def names_of(response: object) -> list[str]:
    from controlplane.xds.resources import resource_name
    from controlplane.xds.snapshot import _message_class

    out = []
    for packed in response.resources:  # type: ignore[attr-defined]
        msg = _message_class(packed.type_url)()
        msg.ParseFromString(packed.value)
        out.append(resource_name(packed.type_url, msg))
    return out


async def test_initial_fetch_cds_eds_lds_rds_and_acks_recorded(xds: XdsHarness) -> None:
    snap = xds.cache.get("edge")
    assert snap is not None
    async with AdsClient(xds.target) as client:
        await client.request(CLUSTER, node=node())
        cds = await client.recv()
        assert cds.type_url == CLUSTER and cds.version_info == snap.version(CLUSTER)
        assert names_of(cds) == ["a", "b"]
        await client.ack(cds)
        await client.request(ENDPOINT, ["a", "b"])
        eds = await client.recv()
        assert names_of(eds) == ["a", "b"] and eds.version_info == snap.version(ENDPOINT)
        await client.ack(eds, names=["a", "b"])
        await client.request(LISTENER)
        lds = await client.recv()
        assert names_of(lds) == ["http"]
        await client.ack(lds)
        await client.request(ROUTE, ["r1"])
        rds = await client.recv()
        assert names_of(rds) == ["r1"]
        await client.ack(rds, names=["r1"])

        versions = {t: snap.version(t) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
        assert await wait_acked(xds.registry, "edge", versions, timeout=5)
        [proxy] = xds.registry.list()
        assert (proxy.node_id, proxy.group, proxy.protocol) == ("proxy-1", "edge", "sotw")
        assert proxy.type(ENDPOINT).resource_names == ("a", "b")  # type: ignore[union-attr]
        assert proxy.type(CLUSTER).resource_names is None  # type: ignore[union-attr]
        assert await client.silent_for(SILENCE)  # ACKs are not answered


async def test_nack_is_recorded_and_the_same_version_is_not_resent(xds: XdsHarness) -> None:
    async with AdsClient(xds.target) as client:
        await client.request(CLUSTER, node=node())
        cds = await client.recv()
        await client.request(CLUSTER, version="", nonce=cds.nonce, error="unknown extension foo")
        await wait_for(lambda: xds.registry.list()[0].type(CLUSTER).last_nack)  # type: ignore[union-attr]
        status = xds.registry.list()[0].type(CLUSTER)
        assert status is not None
        assert status.last_nack == "unknown extension foo"
        assert status.last_nack_version == cds.version_info
        assert status.acked_version is None
        assert await client.silent_for(SILENCE)  # no loop
        assert not await wait_acked(
            xds.registry, "edge", {CLUSTER: cds.version_info}, timeout=0.1
        )  # a NACK of the awaited version ends the wait early with False

        # An unrelated change (EDS only) pushes nothing for CDS either.
        xds.cache.set_snapshot("edge", app(port=9002))
        assert await client.silent_for(SILENCE)
        # A new CDS version is sent.
        xds.cache.set_snapshot("edge", app(clusters=("a", "b", "c")))
        fixed = await client.recv()
        assert fixed.version_info != cds.version_info and names_of(fixed) == ["a", "b", "c"]
        assert xds.registry.list()[0].type(CLUSTER).responses == 2  # type: ignore[union-attr]


async def test_eds_name_set_change_is_answered(xds: XdsHarness) -> None:
    async with AdsClient(xds.target) as client:
        await client.request(ENDPOINT, ["a"], node=node())
        first = await client.recv()
        assert names_of(first) == ["a"]
        await client.ack(first, names=["a", "b", "missing"])
        second = await client.recv()
        assert names_of(second) == ["a", "b"]  # exactly the requested names that exist
        assert second.version_info == first.version_info
        await client.ack(second, names=["a", "b", "missing"])
        assert await client.silent_for(SILENCE)


async def test_stale_nonce_is_ignored(xds: XdsHarness) -> None:
    async with AdsClient(xds.target) as client:
        await client.request(ENDPOINT, ["a"], node=node())
        first = await client.recv()
        await client.ack(first, names=["a"])
        xds.cache.set_snapshot("edge", app(port=9002))
        pushed = await client.recv()
        assert pushed.nonce != first.nonce and pushed.version_info != first.version_info
        # A request answering the older response is stale, even with new names.
        await client.request(ENDPOINT, ["a", "b"], version=first.version_info, nonce=first.nonce)
        assert await client.silent_for(SILENCE)
        await client.request(ENDPOINT, ["a", "b"], version=pushed.version_info, nonce=pushed.nonce)
        assert names_of(await client.recv()) == ["a", "b"]


async def test_a_proxy_that_has_not_answered_gets_only_the_latest_version_after(
        xds: XdsHarness) -> None:
    async with AdsClient(xds.target) as client:
        await client.request(ENDPOINT, ["a"], node=node())
        first = await client.recv()
        xds.cache.set_snapshot("edge", app(port=9002))
        xds.cache.set_snapshot("edge", app(port=9003))
        assert await client.silent_for(SILENCE)  # one response in flight per type
        await client.ack(first, names=["a"])
        latest = await client.recv()
        current = xds.cache.get("edge")
        assert current is not None and latest.version_info == current.version(ENDPOINT)
        assert latest.version_info != first.version_info
        await client.ack(latest, names=["a"])
        assert await client.silent_for(SILENCE)  # nothing in between was queued


async def test_secrets_answer_every_requested_name(xds: XdsHarness) -> None:
    async with AdsClient(xds.target) as client:
        await client.request(SECRET, ["key-1"], node=node())
        first = await client.recv()
        assert names_of(first) == ["key-1"]
        await client.ack(first, names=["key-1", "key-2"])
        assert names_of(await client.recv()) == ["key-1", "key-2"]


async def test_snapshot_change_pushes_in_cds_eds_lds_rds_order(xds: XdsHarness) -> None:
    async with AdsClient(xds.target) as client:
        subscriptions = {ROUTE: ["r1"], LISTENER: [], ENDPOINT: ["a"], CLUSTER: []}
        first = True
        for type_url, names in subscriptions.items():
            await client.request(type_url, names, node=node() if first else None)
            first = False
            await client.ack(await client.recv(), names=names)
        xds.cache.set_snapshot("edge", app(port=9002, clusters=("c", "a"), route="r1"))
        pushed = [(await client.recv()).type_url for _ in range(3)]
        assert pushed == [CLUSTER, ENDPOINT, ROUTE]  # LDS unchanged: not sent
        assert await client.silent_for(SILENCE)


async def test_restarted_control_plane_answers_last_version_with_same_version() -> None:
    snap = app()
    async with xds_server() as first_server:
        first_server.cache.set_snapshot("edge", snap)
        async with AdsClient(first_server.target) as client:
            await client.request(CLUSTER, node=node())
            before = await client.recv()
    async with xds_server() as second_server:  # a new process would compute the same
        second_server.cache.set_snapshot("edge", app())
        async with AdsClient(second_server.target) as client:
            await client.request(CLUSTER, version=before.version_info, node=node())
            after = await client.recv()
            assert after.version_info == before.version_info
            await client.ack(after)
            assert await wait_acked(
                second_server.registry, "edge", {CLUSTER: before.version_info}, timeout=5
            )


async def test_not_served_before_ready_and_new_groups_are_announced() -> None:
    async with xds_server(ready=False) as xds:
        asked: list[str] = []
        xds.cache.on_new_group = asked.append
        async with AdsClient(xds.target) as client:
            await client.request(CLUSTER, node=node(group="canary"))
            await wait_for(lambda: asked == ["canary"])
            assert await client.silent_for(SILENCE)  # not ready: no empty config served
            xds.cache.set_snapshot("canary", app())
            assert await client.silent_for(SILENCE)  # a snapshot, but the state is not ready
            xds.cache.mark_ready()
            assert names_of(await client.recv()) == ["a", "b"]


async def test_unknown_type_is_answered_empty_and_the_stream_survives(xds: XdsHarness) -> None:
    async with AdsClient(xds.target) as client:
        await client.request("type.googleapis.com/no.such.Type", ["x"], node=node())
        empty = await client.recv()
        assert empty.type_url == "type.googleapis.com/no.such.Type" and not empty.resources
        await client.request("", [])  # no type at all: ignored
        await client.request(CLUSTER)
        assert names_of(await client.recv()) == ["a", "b"]


async def test_node_without_group_is_refused(xds: XdsHarness) -> None:
    import grpc

    async with AdsClient(xds.target) as client:
        await client.request(CLUSTER, node=node(group=""))
        await wait_for(lambda: client.error is not None)
        assert client.error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[union-attr]
    assert len(xds.registry) == 0


async def test_sds_service_streams_and_fetches_secrets(xds: XdsHarness) -> None:
    import grpc
    from envoy.service.discovery.v3 import discovery_pb2
    from envoy.service.secret.v3 import sds_pb2_grpc

    async with grpc.aio.insecure_channel(xds.target) as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        fetched = await stub.FetchSecrets(
            discovery_pb2.DiscoveryRequest(node=node(), type_url=SECRET,
                                           resource_names=["key-2", "nope"]),
            timeout=5,
        )
        assert names_of(fetched) == ["key-2"]
        call = stub.StreamSecrets()
        await call.write(discovery_pb2.DiscoveryRequest(node=node(), type_url=SECRET,
                                                        resource_names=["key-1"]))
        assert names_of(await call.read()) == ["key-1"]
        call.cancel()


async def test_a_new_group_is_served_once_its_snapshot_arrives(xds: XdsHarness) -> None:
    asked: list[str] = []
    xds.cache.on_new_group = asked.append
    async with AdsClient(xds.target) as client:
        await client.request(CLUSTER, node=node(group="canary"))
        await wait_for(lambda: asked == ["canary"])
        assert await client.silent_for(SILENCE)
        xds.cache.set_snapshot("canary", app(clusters=("x",)))
        assert names_of(await client.recv()) == ["x"]
