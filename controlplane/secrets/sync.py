"""SecretSync: keeps the vault in step with the desired state (issue, rotate when due)
and the proxies in step with the vault (every change handed to the publisher); during a
CA rotation it takes each step (promote the new CA, retire the old) once the fleet has
ACKed the one before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from controlplane.errors import ControlPlaneError
from controlplane.model import DesiredState
from controlplane.secrets.vault import SYSTEM_ACTOR, Material, Vault

log = logging.getLogger(__name__)

FleetAcked = Callable[[DesiredState, Material], Awaitable[bool]]
"""(state, material) → whether every connected proxy ACKed the secrets it implies."""


class SecretSync:
    """Keeps the vault in step with the state, and the proxies in step with the vault.

    Args:
        vault: the records.
        on_material: called with the full material after each change (the publisher).
        check_every_s: the longest sleep between rotation checks.
        fleet_acked: whether every connected proxy has ACKed the secrets `Material`
            gives its group (the wiring reads the fleet's ACK reports). During a CA
            rotation the previous CA is retired once it says so; without it, never.
        retire_poll_s: how often a CA rotation asks `fleet_acked`.
    """

    def __init__(self, vault: Vault, on_material: Callable[[Material], None], *,
                 check_every_s: float = 30.0, retry_s: float = 1.0,
                 fleet_acked: FleetAcked | None = None, retire_poll_s: float = 0.5) -> None:
        self._vault = vault
        self._on_material = on_material
        self._check_every_s = check_every_s
        self._retry_s = retry_s
        self._fleet_acked = fleet_acked
        self._retire_poll_s = retire_poll_s
        self._state: DesiredState | None = None
        self._wake = asyncio.Event()
        self._revision = 0
        self._material: Material | None = None
        self._material_changed = asyncio.Event()

    @property
    def material(self) -> Material:
        """The material last handed over (`prime` first)."""
        if self._material is None:
            raise RuntimeError("SecretSync.material before prime()")  # a wiring bug
        return self._material

    async def prime(self, state: DesiredState) -> None:
        """Before the first publish: create what is missing, hand over the material."""
        self._state = state
        for done in await self._vault.ensure(state):
            log.info("secrets: %s", done)
        material, self._revision = await self._vault.load()
        self._hand_over(material)

    def _hand_over(self, material: Material) -> None:
        self._material = material
        self._material_changed.set()
        self._on_material(material)

    def update(self, state: DesiredState) -> None:
        self._state = state
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._ensure_loop())
            tasks.create_task(self._watch_loop())
            tasks.create_task(self._retire_loop())

    async def _ensure_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
            try:
                async with asyncio.timeout(await self._sleep_s()):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._state is None:
                continue
            try:
                for done in await self._vault.ensure(self._state):
                    log.info("secrets: %s", done)
            except ControlPlaneError as exc:
                log.warning("secrets: %s; retrying in %.1fs", exc, self._retry_s)
                await asyncio.sleep(self._retry_s)
                self._wake.set()

    async def _sleep_s(self) -> float:
        try:
            due = min((await self._vault.rotation_times()).values(), default=None)
        except ControlPlaneError:
            return self._retry_s
        if due is None:
            return self._check_every_s
        return max(0.05, min(self._check_every_s, due - time.time()))

    async def _watch_loop(self) -> None:
        while True:
            try:
                async for revision in self._vault.changes(self._revision + 1):
                    if revision <= self._revision:
                        continue
                    material, self._revision = await self._vault.load()
                    self._hand_over(material)
            except ControlPlaneError as exc:  # down or compacted: re-read, watch again
                log.warning("secrets watch: %s; re-reading in %.1fs", exc, self._retry_s)
                await asyncio.sleep(self._retry_s)
                try:
                    material, self._revision = await self._vault.load()
                    self._hand_over(material)
                except ControlPlaneError:
                    continue

    async def _retire_loop(self) -> None:
        """During a CA rotation, each step once every connected proxy has ACKed the
        secrets of the current material: the new CA issues once the two-CA bundle is
        everywhere; the old CA leaves the bundle once the new certificates are."""
        while True:
            await self._material_changed.wait()
            self._material_changed.clear()
            while (self._fleet_acked is not None and self._state is not None
                   and (material := self._material) is not None
                   and len(material.ca_serials) > 1):
                try:
                    if await self._fleet_acked(self._state, material):
                        if material.ca_next:
                            await self._vault.promote_next_ca(
                                self._state, material.ca_serials[1], actor=SYSTEM_ACTOR,
                                reason="every connected proxy ACKed the bundle trusting CA "
                                       f"{material.ca_serials[1]}")
                        else:
                            await self._vault.retire_previous_ca(
                                material.ca_serials[1], actor=SYSTEM_ACTOR,
                                reason="every connected proxy ACKed certificates of CA "
                                       f"{material.ca_serials[0]}")
                        break  # the watch hands over the next material
                except ControlPlaneError as exc:
                    log.warning("CA rotation: %s; retrying in %.1fs", exc, self._retry_s)
                await asyncio.sleep(self._retire_poll_s)
