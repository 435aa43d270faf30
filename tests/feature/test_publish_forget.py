"""Groups that only a client named are forgotten by the publisher once no stream serves
them: their snapshot, their renders, and (`on_forgotten`) what else keeps their name."""

from __future__ import annotations

from controlplane.model import DesiredState, parse_yaml
from controlplane.publish import Publisher
from controlplane.stage import RenderStage
from controlplane.xds.cache import SnapshotCache
from tests.support.states import PAYMENTS_EDGE
from tests.support.wait import wait_for


async def test_an_unconfigured_group_is_forgotten_after_its_last_stream() -> None:
    cache, stage, forgotten = SnapshotCache(), RenderStage(), list[str]()
    publisher = Publisher(cache, stage=stage, on_forgotten=forgotten.extend)
    publisher.update(DesiredState.of(parse_yaml(PAYMENTS_EDGE)))
    publisher.publish_now()
    cache.want("stranger")
    cache.want("stranger")  # two streams
    cache.want("edge")  # configured: kept with or without streams
    await wait_for(lambda: cache.get("stranger") is not None, message="stranger published")
    renders = stage.renders
    cache.release("stranger")
    cache.release("edge")
    publisher.update(DesiredState.of(parse_yaml(PAYMENTS_EDGE)))  # a publish: one stream left
    await wait_for(lambda: publisher._timer is None and stage.renders >= renders)
    assert cache.get("stranger") is not None and forgotten == []
    cache.release("stranger")  # the last one: forgotten at the next publish, which it arms
    await wait_for(lambda: cache.get("stranger") is None, message="stranger forgotten")
    assert forgotten == ["stranger"]
    assert cache.groups() == ["edge"]
    assert all(key[1] != "stranger" for key in stage._memo)
    cache.want("stranger")  # it may come back: announced and published again
    await wait_for(lambda: cache.get("stranger") is not None, message="published again")
