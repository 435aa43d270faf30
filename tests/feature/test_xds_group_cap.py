"""Groups named by clients are held only while a stream serves them, and only so many
without config: a stream for one more is refused with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import grpc

from controlplane.xds.resources import LISTENER
from tests.support.ads import AdsClient, node, xds_server
from tests.support.wait import wait_for

CAP = 3


async def test_a_stream_past_the_unconfigured_group_cap_is_refused() -> None:
    async with xds_server(max_unconfigured_groups=CAP) as xds:
        xds.cache.configured = frozenset({"edge"})
        held = [AdsClient(xds.target) for _ in range(CAP)]
        for i, client in enumerate(held):
            await client.__aenter__()
            await client.request(LISTENER, node=node(f"p{i}", group=f"fresh-{i}"))
        await wait_for(lambda: len(xds.registry) == CAP)
        try:
            async with AdsClient(xds.target) as extra:
                await extra.request(LISTENER, node=node("px", group="one-too-many"))
                await wait_for(lambda: extra.error is not None)
                assert extra.error is not None
                assert extra.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "'one-too-many' is not configured" in str(extra.error.details())
            # A configured group is not counted: its proxies are always served.
            async with AdsClient(xds.target) as real:
                await real.request(LISTENER, node=node("real", group="edge"))
                await wait_for(lambda: len(xds.registry) == CAP + 1)
                assert real.error is None
        finally:
            for client in held:
                await client.close()
        await wait_for(lambda: len(xds.registry) == 0)
        assert not any(xds.cache.held(f"fresh-{i}") for i in range(CAP))
        # Forgotten (what the publisher does on its next publish): room again.
        assert xds.cache.forget_idle({"edge"}) == [f"fresh-{i}" for i in range(CAP)]
        async with AdsClient(xds.target) as again:
            await again.request(LISTENER, node=node("p9", group="fresh-9"))
            await wait_for(lambda: len(xds.registry) == 1)
            assert again.error is None
