"""Following any key prefix of the etcd we use, ours or not: list it, then watch it.

The leased-endpoint sources (`endpointsFrom: {etcd: PREFIX}`, registrations) need every
key under a prefix now and each change after, without missing one across an etcd
restart: `follow_prefix` lists at one revision, watches from the next, resumes from the
last revision seen when the stream breaks, and lists again (a `reset`) when etcd
compacted that revision meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field

from controlplane.errors import StoreUnavailableError
from controlplane.store.kv import Compacted, EtcdKV
from controlplane.store.watch import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefixChange:
    """What changed under a prefix: key → its new value, or None when it was deleted
    (a lease that ended deletes its keys). With `reset`, `changes` is every key there
    is now and any key not in it is gone."""

    changes: Mapping[bytes, bytes | None] = field(default_factory=dict)
    reset: bool = False


async def follow_prefix(kv: EtcdKV, prefix: bytes) -> AsyncGenerator[PrefixChange, None]:
    """Every key under `prefix` (a reset), then each change as it comes, for as long as
    it is iterated. An etcd outage is waited out (logged, retried with back-off)."""
    backoff = Backoff()
    seen: int | None = None  # None: list before watching
    while True:
        try:
            if seen is None:
                got = await kv.range(prefix)
                seen = got.revision
                backoff.reset()
                yield PrefixChange({item.key: item.value for item in got.kvs}, reset=True)
            async with contextlib.aclosing(kv.watch(prefix, seen + 1)) as events:
                async for event in events:
                    backoff.reset()
                    seen = max(seen, event.mod_revision)
                    yield PrefixChange({event.key: None if event.deleted else event.value})
        except Compacted as exc:
            log.warning("watch of %s: %s; listing it again", prefix.decode(errors="replace"),
                        exc)
            seen = None
        except StoreUnavailableError as exc:
            log.warning("watch of %s: %s; resuming in %.1fs", prefix.decode(errors="replace"),
                        exc, backoff.delay)
            await backoff.wait()
