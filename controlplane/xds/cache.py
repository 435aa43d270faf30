"""The snapshot cache: the one seam between desired state and the xDS streams.

Desired state enters through `set_snapshot(group, snapshot)`; streams read
through the narrow `SnapshotSource` protocol (`wait_ready`, `get`, `want`/`release`,
`subscribe`/`unsubscribe`), like go-control-plane's `ConfigWatcher`. Waiting is
event-driven (a stream's callback is called on each change), never polling.

Not thread-safe: call every method from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Protocol

from controlplane.errors import ResourceExhaustedError
from controlplane.xds.snapshot import Snapshot

log = logging.getLogger(__name__)

MAX_UNCONFIGURED_GROUPS = 1_000
"""Default cap on groups held that the desired state does not configure: a group name is
the client's claim, and each one held costs a snapshot, metric labels and renders."""


class SnapshotSource(Protocol):
    """What an xDS stream needs from a cache; the server depends on nothing else."""

    async def wait_ready(self) -> None:
        """Return once the first full state is loaded."""

    def want(self, group: str) -> None:
        """A stream serves `group`: make sure a snapshot for it will come. Pair each call
        with one `release` when the stream ends.

        Errors:
            ResourceExhaustedError: too many groups without config are held already.
        """

    def release(self, group: str) -> None:
        """A stream that called `want(group)` ended."""

    def get(self, group: str) -> Snapshot | None:
        """The current snapshot of `group`, or None when it has none yet."""

    def subscribe(self, group: str, changed: Callable[[], None]) -> None:
        """Call `changed` (synchronously; it must not block) after each new snapshot of
        `group`, until `unsubscribe(group, changed)`."""

    def unsubscribe(self, group: str, changed: Callable[[], None]) -> None:
        """Stop calling `changed` (one equal to it) for `group`."""


class SnapshotCache:
    """Latest known-good snapshot per proxy group.

    Attributes:
        on_new_group: called (synchronously, once per group) the first time a
            stream asks for a group that has no snapshot; the wiring uses it
            to translate that group. It must not block.
        on_idle_group: called (synchronously) when the last stream of a group ends;
            the wiring then forgets the group unless it is configured (`forget_idle`).
        configured: the groups the desired state configures (set by the publisher):
            these do not count against `max_unconfigured_groups`.
        max_unconfigured_groups: groups held at once that are not `configured` (with a
            stream, or not yet forgotten); a stream for one more is refused.
    """

    def __init__(self, *, on_new_group: Callable[[str], None] | None = None,
                 on_idle_group: Callable[[str], None] | None = None,
                 max_unconfigured_groups: int = MAX_UNCONFIGURED_GROUPS) -> None:
        self.on_new_group = on_new_group
        self.on_idle_group = on_idle_group
        self.configured: frozenset[str] = frozenset()
        self.max_unconfigured_groups = max_unconfigured_groups
        self._streams: dict[str, int] = {}  # group -> streams that want it
        self._unconfigured: set[str] = set()  # held, not configured, not yet forgotten
        self._snapshots: dict[str, Snapshot] = {}
        self._subscribers: dict[str, set[Callable[[], None]]] = {}
        self._asked: set[str] = set()
        self._ready = asyncio.Event()

    def set_snapshot(self, group: str, snapshot: Snapshot) -> None:
        """Publish `snapshot` for `group` and wake its streams.

        A snapshot whose versions equal the current one's changes nothing (no
        wake-up, no push).

        Errors:
            InconsistentSnapshotError: the snapshot is not consistent; the
                group keeps its last good snapshot.
        """
        snapshot.check()
        current = self._snapshots.get(group)
        if current is not None and current.versions == snapshot.versions:
            return
        if current is not None:
            snapshot.note_predecessor(current)
        self._snapshots[group] = snapshot
        for changed in list(self._subscribers.get(group, ())):
            changed()
        log.debug("group %s: %r", group, snapshot)

    def subscribe(self, group: str, changed: Callable[[], None]) -> None:
        """Call `changed` (synchronously; it must not block) after each new snapshot of
        `group`, until `unsubscribe(group, changed)`. Cheaper than a task per stream
        waiting for a change: one call per stream and change, no wake-up chain; and a
        bound method costs an idle stream less than a closure to unsubscribe with."""
        self._subscribers.setdefault(group, set()).add(changed)

    def unsubscribe(self, group: str, changed: Callable[[], None]) -> None:
        """Stop calling `changed` (one equal to it: a bound method of the same object)."""
        subscribers = self._subscribers.get(group)
        if subscribers is not None:
            subscribers.discard(changed)
            if not subscribers:
                del self._subscribers[group]

    def get(self, group: str) -> Snapshot | None:
        """The current snapshot of `group`, or None."""
        return self._snapshots.get(group)

    def groups(self) -> list[str]:
        """Groups with a snapshot, sorted."""
        return sorted(self._snapshots)

    def want(self, group: str) -> None:
        """Count a stream of `group`; call `on_new_group` the first time a stream asks for
        a group with no snapshot.

        Errors:
            ResourceExhaustedError: `group` is not configured and `max_unconfigured_groups`
                such groups are held already; nothing was counted.
        """
        held = self._streams.get(group, 0)
        if not held and group not in self.configured and group not in self._unconfigured:
            if len(self._unconfigured) >= self.max_unconfigured_groups:
                raise ResourceExhaustedError(
                    f"group {group!r} is not configured and {len(self._unconfigured)} "
                    f"unconfigured groups are held already (at most "
                    f"{self.max_unconfigured_groups}); configure the group (apply a "
                    "ProxyGroup or a Listener naming it) or retry later")
            self._unconfigured.add(group)
        self._streams[group] = held + 1
        if group in self._snapshots or group in self._asked:
            return
        self._asked.add(group)
        if self.on_new_group is not None:
            self.on_new_group(group)

    def release(self, group: str) -> None:
        """A stream of `group` ended; the last one calls `on_idle_group`."""
        held = self._streams.get(group, 0) - 1
        if held > 0:
            self._streams[group] = held
            return
        self._streams.pop(group, None)
        if self.on_idle_group is not None:
            self.on_idle_group(group)

    def held(self, group: str) -> bool:
        """Whether a stream of `group` is open."""
        return group in self._streams

    def forget_idle(self, keep: Collection[str]) -> list[str]:
        """Forget every group that is not in `keep` and has no stream (its snapshot and
        what announced it); returns those groups, sorted."""
        known = {*self._snapshots, *self._asked, *self._unconfigured}
        gone = sorted(g for g in known if g not in keep and g not in self._streams)
        for group in gone:
            self._snapshots.pop(group, None)  # its streams keep what they were sent
            self._asked.discard(group)
        self._unconfigured.difference_update(gone)
        self._unconfigured.difference_update(self.configured)
        return gone

    def mark_ready(self) -> None:
        """The first full state is loaded: streams may now be answered."""
        self._ready.set()

    @property
    def ready(self) -> bool:
        """Whether `mark_ready` was called."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Return once `mark_ready` was called (at once if it was)."""
        await self._ready.wait()
