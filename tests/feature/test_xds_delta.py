"""Incremental (Delta) ADS against a real grpc.aio server with a real grpc.aio client."""

from __future__ import annotations

import pytest

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER
from controlplane.xds.snapshot import Snapshot
from tests.support.acks import wait_acked
from tests.support.ads import AdsClient, XdsHarness, node, xds_server
from tests.support.wait import wait_for
from tests.support.xds_resources import eds_cluster, endpoints, resources

SILENCE = 0.5


def snap(ports: dict[str, int]) -> Snapshot:
    return Snapshot.build(
        resources(
            clusters=[eds_cluster(c) for c in sorted(ports)],
            endpoints=[endpoints(c, [("127.0.0.1", p)]) for c, p in sorted(ports.items())],
        )
    )


@pytest.fixture
async def xds() -> XdsHarness:  # type: ignore[misc]
    async with xds_server() as harness:
        harness.cache.set_snapshot("edge", snap({"a": 1, "b": 2}))
        yield harness


def versions(response: object) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}  # type: ignore[attr-defined]


async def test_wildcard_cds_then_only_changed_and_removed(xds: XdsHarness) -> None:
    first_snap = xds.cache.get("edge")
    assert first_snap is not None
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(CLUSTER, node=node())
        full = await client.recv()
        assert sorted(versions(full)) == ["a", "b"]
        assert full.system_version_info == first_snap.version(CLUSTER)
        await client.ack(full)
        assert await wait_acked(xds.registry, "edge", {CLUSTER: full.system_version_info},
                                             timeout=5)
        assert xds.registry.list()[0].protocol == "delta"

        # One cluster changes (a new service_name), one is added, one removed.
        xds.cache.set_snapshot(
            "edge",
            Snapshot.build(resources(
                clusters=[eds_cluster("a", service_name="a2"), eds_cluster("c")],
                endpoints=[endpoints(n, [("127.0.0.1", 1)]) for n in ("a2", "c")],
            )),
        )
        update = await client.recv()
        assert sorted(versions(update)) == ["a", "c"]
        assert list(update.removed_resources) == ["b"]
        await client.ack(update)

        # Only the EDS side changes: nothing for CDS.
        xds.cache.set_snapshot(
            "edge",
            Snapshot.build(resources(
                clusters=[eds_cluster("a", service_name="a2"), eds_cluster("c")],
                endpoints=[endpoints(n, [("127.0.0.1", 2)]) for n in ("a2", "c")],
            )),
        )
        assert await client.silent_for(SILENCE)


async def test_eds_subscribe_and_unsubscribe(xds: XdsHarness) -> None:
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(ENDPOINT, subscribe=["a"], node=node())
        first = await client.recv()
        assert list(versions(first)) == ["a"]
        await client.delta_request(ENDPOINT, subscribe=["b"], nonce=first.nonce)  # ACK + more
        second = await client.recv()
        assert list(versions(second)) == ["b"]  # not a again
        await client.delta_request(ENDPOINT, unsubscribe=["a"], nonce=second.nonce)
        assert await client.silent_for(SILENCE)
        status = xds.registry.list()[0].type(ENDPOINT)
        assert status is not None and status.resource_names == ("b",)

        xds.cache.set_snapshot("edge", snap({"a": 10, "b": 2}))  # only a (unsubscribed) changed
        assert await client.silent_for(SILENCE)
        changed = xds.cache.get("edge")
        assert changed is not None
        # The client is at the new version without a response: a rollout wait still ends.
        assert await wait_acked(xds.registry, "edge", {ENDPOINT: changed.version(ENDPOINT)},
                                             timeout=5)
        xds.cache.set_snapshot("edge", snap({"a": 10, "b": 20}))
        third = await client.recv()
        assert list(versions(third)) == ["b"] and not third.removed_resources


async def test_missing_names_are_reported_removed_once(xds: XdsHarness) -> None:
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(ENDPOINT, subscribe=["a", "nope"], node=node())
        first = await client.recv()
        assert list(versions(first)) == ["a"] and list(first.removed_resources) == ["nope"]
        await client.ack(first)
        xds.cache.set_snapshot("edge", snap({"a": 1, "b": 3}))
        assert await client.silent_for(SILENCE)
        xds.cache.set_snapshot("edge", snap({"a": 1, "b": 3, "nope": 4}))
        appeared = await client.recv()
        assert list(versions(appeared)) == ["nope"]


async def test_nack_does_not_loop(xds: XdsHarness) -> None:
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(CLUSTER, node=node())
        full = await client.recv()
        await client.delta_request(CLUSTER, nonce=full.nonce, error="cluster b: bad config")
        await wait_for(lambda: xds.registry.list()[0].type(CLUSTER).last_nack)  # type: ignore[union-attr]
        status = xds.registry.list()[0].type(CLUSTER)
        assert status is not None and status.last_nack == "cluster b: bad config"
        assert status.last_nack_version == full.system_version_info
        assert await client.silent_for(SILENCE)
        xds.cache.set_snapshot("edge", snap({"a": 1, "b": 2, "c": 3}))
        fixed = await client.recv()
        assert list(versions(fixed)) == ["c"]  # only what changed since the rejected response


async def test_reconnect_with_initial_versions_sends_only_differences(xds: XdsHarness) -> None:
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(CLUSTER, node=node())
        held = versions(await client.recv())
    xds.cache.set_snapshot("edge", snap({"a": 1, "c": 3}))  # b removed, c added
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(CLUSTER, subscribe=["*"], initial=held, node=node())
        resumed = await client.recv()
        assert list(versions(resumed)) == ["c"]
        assert list(resumed.removed_resources) == ["b"]


async def test_first_request_of_an_empty_type_is_answered(xds: XdsHarness) -> None:
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(LISTENER, node=node())
        empty = await client.recv()
        assert empty.type_url == LISTENER and not empty.resources


async def test_an_unanswered_response_holds_later_versions_until_its_ack(
        xds: XdsHarness) -> None:
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(CLUSTER, node=node())
        first = await client.recv()
        xds.cache.set_snapshot("edge", snap({"a": 1, "b": 2, "c": 3}))
        xds.cache.set_snapshot("edge", snap({"a": 1, "b": 2, "d": 4}))
        assert await client.silent_for(SILENCE)  # one response in flight per type
        await client.ack(first)
        latest = await client.recv()  # straight to the latest: c never existed for it
        assert sorted(versions(latest)) == ["d"] and list(latest.removed_resources) == []
        await client.ack(latest)
        assert await client.silent_for(SILENCE)


async def test_a_changed_cluster_gets_its_unchanged_endpoints_again(xds: XdsHarness) -> None:
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(CLUSTER, node=node())
        clusters = await client.recv()
        await client.ack(clusters)
        await client.delta_request(ENDPOINT, subscribe=["a", "b"])
        eds = await client.recv()
        assert sorted(versions(eds)) == ["a", "b"]
        await client.ack(eds)

        # Cluster a changes, its endpoints do not: Envoy re-creates a and waits for them.
        xds.cache.set_snapshot("edge", Snapshot.build(resources(
            clusters=[eds_cluster("a", service_name="a"), eds_cluster("b")],
            endpoints=[endpoints("a", [("127.0.0.1", 1)]), endpoints("b", [("127.0.0.1", 2)])],
        )))
        cds = await client.recv()
        assert cds.type_url == CLUSTER and list(versions(cds)) == ["a"]
        again = await client.recv()
        assert again.type_url == ENDPOINT and versions(again) == {"a": versions(eds)["a"]}
        await client.ack(cds)
        await client.ack(again)

        # Then an endpoint of b changes: only b, as usual.
        xds.cache.set_snapshot("edge", Snapshot.build(resources(
            clusters=[eds_cluster("a", service_name="a"), eds_cluster("b")],
            endpoints=[endpoints("a", [("127.0.0.1", 1)]), endpoints("b", [("127.0.0.1", 3)])],
        )))
        moved = await client.recv()
        assert moved.type_url == ENDPOINT and list(versions(moved)) == ["b"]


async def test_after_a_subscription_change_updates_follow_the_new_names(
        xds: XdsHarness) -> None:
    async with AdsClient(xds.target, delta=True) as client:
        await client.delta_request(ENDPOINT, subscribe=["a"], node=node())
        first = await client.recv()
        await client.ack(first)
        await client.delta_request(ENDPOINT, subscribe=["b"], unsubscribe=["a"])
        second = await client.recv()
        assert list(versions(second)) == ["b"]
        await client.ack(second)
        xds.cache.set_snapshot("edge", snap({"a": 10, "b": 20, "c": 30}))
        update = await client.recv()
        assert list(versions(update)) == ["b"] and not update.removed_resources
        await client.ack(update)
        xds.cache.set_snapshot("edge", snap({"a": 11, "c": 30}))  # b gone
        gone = await client.recv()
        assert not gone.resources and list(gone.removed_resources) == ["b"]
