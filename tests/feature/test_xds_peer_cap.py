"""One client may hold at most `max_streams_per_peer` xDS streams at once: one more from
it is refused with RESOURCE_EXHAUSTED, while another client is still served.

Both clients are on this host: one comes from 127.0.0.1, the other from ::1 (two
source addresses, two peers); `any_peer_key` caps loopback, which serve exempts in
plaintext."""

from __future__ import annotations

import grpc

from controlplane.xds.peers import any_peer_key
from controlplane.xds.resources import LISTENER
from tests.support.ads import AdsClient, node, xds_server
from tests.support.wait import wait_for
from tests.support.xds_resources import resources

CAP = 4


async def test_a_peer_past_its_stream_cap_is_refused_and_others_are_served() -> None:
    from controlplane.xds.snapshot import Snapshot

    async with xds_server(host="[::]", max_streams_per_peer=CAP, peer_of=any_peer_key) as xds:
        xds.cache.set_snapshot("edge", Snapshot.build(resources()))
        v4 = f"127.0.0.1:{xds.port}"
        held = [AdsClient(v4) for _ in range(CAP)]
        try:
            for i, client in enumerate(held):
                await client.__aenter__()
                await client.request(LISTENER, node=node(f"greedy-{i}"))
            await wait_for(lambda: len(xds.registry) == CAP)
            async with AdsClient(v4) as extra:
                # Refused as it opens, before any request (one written now could fail on
                # the client's side first, with a status of its own).
                assert await extra._call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert f"has {CAP} xDS streams open" in await extra._call.details()
            async with AdsClient(f"[::1]:{xds.port}") as other:
                await other.request(LISTENER, node=node("other-host"))
                await other.recv()
                assert other.error is None
        finally:
            for client in held:
                await client.close()
        await wait_for(lambda: len(xds.registry) == 0)
        async with AdsClient(v4) as again:  # its slots are given back when streams end
            await again.request(LISTENER, node=node("greedy-again"))
            await again.recv()
