"""Desired state → per-group snapshots in the cache, coalesced and known-good only.

The one stage between the store and the xDS server: it has each proxy group's
snapshot of the state rendered (`stage.RenderStage`, which the rollout engine's
fleet view reads too) and hands it to the cache. A failed translation keeps the group's last good
snapshot and logs every problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from controlplane.errors import ControlPlaneError
from controlplane.model import DesiredState
from controlplane.stage import RenderStage, resources_of, secret_material
from controlplane.translate import ResourceSet, SecretMaterial
from controlplane.translate.render import render
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.snapshot import Snapshot

if TYPE_CHECKING:  # the secrets package pulls in cryptography: keep CLI starts fast
    from controlplane.secrets import Material

log = logging.getLogger(__name__)

HOLD_OFF_S = 0.05
"""At most one publish per this long. A change after a quiet spell goes out at once (on
the next loop turn, with whatever arrived in the same turn); changes within the hold-off
of the last publish wait for its end and go out together (the timer never resets)."""

OFFLOAD_SIZE = 5_000
"""A state this large (routes, listeners, versions and endpoints counted) is translated
in a worker thread: the event loop goes on serving streams and admin calls (the GIL
lets it in every few ms) instead of stalling for the whole translation (~0.8 s at
10k clusters / 100k endpoints, per group). Smaller ones are quicker inline."""

class Publisher:
    """Keeps the snapshot cache in step with the latest desired state.

    Args:
        cache: where snapshots go; its `on_new_group` hook is set to publish that group,
            its `on_idle_group` to forget it at the next publish (unless configured).
        on_published: called after each publish with {group: snapshot} (metrics, tests).
        on_forgotten: called with the groups forgotten (no stream, no config) before a
            publish, so whatever else keeps a group name (metric labels) lets it go.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        stage: RenderStage | None = None,
        on_published: Callable[[Mapping[str, Snapshot]], None] | None = None,
        on_forgotten: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._cache = cache
        self._stage = stage if stage is not None else RenderStage()
        self._state: DesiredState | None = None
        self._secrets = SecretMaterial()  # key material from the vault (update_secrets)
        self._extra_groups: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[None] | None = None  # an offloaded publish
        self._again = False  # a change came while `_running` ran: publish once more
        self._last_publish = float("-inf")  # loop time
        self._on_published = on_published
        self._on_forgotten = on_forgotten
        self.published = asyncio.Event()
        cache.on_new_group = self._new_group
        cache.on_idle_group = self._idle_group

    def update(self, state: DesiredState) -> None:
        """Take a new state (rollout weights included); it is published after the hold-off."""
        self._state = state
        self._cache.configured = frozenset(state.groups())
        self._arm()

    def update_secrets(self, material: Material) -> None:
        """Take new key material (a rotation); published after the hold-off like a state."""
        self._secrets = secret_material(material)
        if self._state is not None:
            self._arm()

    def publish_now(self) -> None:
        """Publish the latest state immediately (first load: serve nothing before it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._publish()

    def _new_group(self, group: str) -> None:
        self._extra_groups.add(group)
        if self._state is not None:
            self._arm()

    def _idle_group(self, group: str) -> None:
        del group  # forgotten at the next publish: a reconnect in between keeps it
        if self._state is not None:
            self._arm()

    def _forget(self) -> None:
        """Drop every group with no stream and no config from the cache, the renders
        and (`on_forgotten`) whatever else keeps group names."""
        assert self._state is not None
        self._extra_groups = {g for g in self._extra_groups if self._cache.held(g)}
        gone = self._cache.forget_idle({*self._state.groups(), *self._extra_groups})
        if gone:
            self._stage.forget(gone)
            log.debug("forgot %d groups without streams or config", len(gone))
            if self._on_forgotten is not None:
                self._on_forgotten(gone)

    def _arm(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._last_publish + HOLD_OFF_S - loop.time())
            self._timer = loop.call_later(wait, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._running is not None:
            self._again = True
        elif self._state is not None and _size(self._state) >= OFFLOAD_SIZE:
            self._running = asyncio.get_running_loop().create_task(self._offloaded())
        else:
            self._publish()

    def _publish(self) -> None:
        if self._state is None:
            return
        with contextlib.suppress(RuntimeError):  # no loop: a synchronous first publish
            self._last_publish = asyncio.get_running_loop().time()
        self._forget()
        self._install(_build(*self._inputs()))

    async def _offloaded(self) -> None:
        try:
            self._last_publish = asyncio.get_running_loop().time()
            self._forget()
            self._install(await asyncio.to_thread(_build, *self._inputs()))
        finally:
            self._running = None
            if self._again:
                self._again = False
                self._arm()

    def _inputs(self) -> tuple[RenderStage, DesiredState, SecretMaterial, list[str]]:
        assert self._state is not None
        return (self._stage, self._state, self._secrets,
                sorted({*self._state.groups(), *self._extra_groups}))

    def _install(self, built: Mapping[str, Snapshot | ControlPlaneError]) -> None:
        published: dict[str, Snapshot] = {}
        for group, snapshot in built.items():
            try:
                if isinstance(snapshot, ControlPlaneError):
                    raise snapshot
                self._cache.set_snapshot(group, snapshot)
            except ControlPlaneError as exc:
                log.error("group %s keeps its last good config: %s", group, exc)
                continue
            published[group] = snapshot
        self._cache.mark_ready()
        self.published.set()
        if self._on_published is not None:
            self._on_published(published)


def _size(state: DesiredState) -> int:
    # Discovered addresses count too: 10,000 leased keys render as many endpoints.
    return len(state.listeners) + len(state.routes) + sum(
        1 + len(version.endpoints)
        for upstream in state.upstreams.values() for version in upstream.spec.versions.values()
    ) + sum(len(found) for found in state.discovered.values())


def _build(stage: RenderStage, state: DesiredState, secrets: SecretMaterial, groups: list[str]
           ) -> dict[str, Snapshot | ControlPlaneError]:
    """Any thread: each group's snapshot, or why it has none."""
    built: dict[str, Snapshot | ControlPlaneError] = {}
    for group in groups:
        try:
            built[group] = stage.snapshot(state, group, secrets)
        except ControlPlaneError as exc:
            built[group] = exc
    return built


def _render(resources: ResourceSet) -> str:
    return "".join(f"# {kind}\n{text}" for kind, text in render(resources).items())


def xds_diff(before: DesiredState, after: DesiredState) -> dict[str, str]:
    """Per group, the unified diff of the xDS it would get (empty string: unchanged)."""
    diffs: dict[str, str] = {}
    for group in sorted({*before.groups(), *after.groups()}):
        old, new = (_render_or_error(s, group) for s in (before, after))
        diffs[group] = "".join(
            difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True),
                fromfile=f"{group} (now)", tofile=f"{group} (after apply)",
            )
        )
    return diffs


def _render_or_error(state: DesiredState, group: str) -> str:
    try:
        # Secrets render redacted: placeholders show which ones a group would get.
        return _render(resources_of(state, group))
    except ControlPlaneError as exc:
        return f"# cannot translate: {exc}\n"
