"""The render stage: desired state → one proxy group's snapshot, built in one place.

The publisher serves what it renders, and the rollout engine compares the fleet's
ACKs against the versions of the same render: both ask this stage, which memoizes
each render on its inputs (the state's content fingerprint, the group, the secret
material), so a leader that checks the fleet every 0.25 s translates a state once,
not once per tick. Thread-safe: the publisher renders large states in a worker thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from controlplane.errors import ControlPlaneError
from controlplane.model import DesiredState
from controlplane.rollout.traffic import retired_of, traffic_of
from controlplane.translate import (
    GroupCertificate,
    ResourceSet,
    SecretMaterial,
    placeholder_material,
    translate,
)
from controlplane.xds.snapshot import Snapshot

if TYPE_CHECKING:  # the secrets package pulls in cryptography: keep CLI starts fast
    from controlplane.secrets import Material

MEMO_STATES = 3
"""Distinct states whose renders are kept: the one served, the one being published and
the one the engine may still be reading. Older ones are dropped (a 10k-cluster snapshot
is tens of MB)."""

PLACEHOLDERS = "placeholders"
"""The secrets key of a render with stand-in key material (`placeholder_material`)."""

_Key = tuple[str, str, object]


def resources_of(state: DesiredState, group: str, secrets: SecretMaterial | None = None
                 ) -> ResourceSet:
    """Pure: `group`'s resources in `state`, with its rollouts' traffic and retirements
    (`secrets` None: stand-ins for key material, e.g. for a dry-run diff).

    Errors:
        ControlPlaneError: the state does not translate for this group.
    """
    return translate(state, group=group, traffic=traffic_of(state), retired=retired_of(state),
                     secrets=placeholder_material(state) if secrets is None else secrets)


def secret_material(material: Material) -> SecretMaterial:
    """The vault's material as translate's input type."""
    return SecretMaterial(
        ca_pem=material.ca_pem,
        certificates=MappingProxyType({
            group: GroupCertificate(cert.cert_pem, cert.key_pem)
            for group, cert in material.certificates.items()
        }),
        credentials=material.credentials,
    )


class RenderStage:
    """Each group's snapshot of a state, rendered once per distinct input."""

    def __init__(self, *, secret_key: bytes | None = None) -> None:
        """`secret_key`: version SDS resources with an HMAC under it (`Snapshot.build`);
        the same on every replica, so their versions agree."""
        self._secret_key = secret_key
        self._memo: OrderedDict[_Key, tuple[Snapshot | ControlPlaneError, object]] = (
            OrderedDict())
        self._states: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.renders = 0
        """Translations made (memo misses): what tests and benchmarks compare."""

    def snapshot(self, state: DesiredState, group: str,
                 secrets: SecretMaterial | None = None) -> Snapshot:
        """`group`'s snapshot of `state` (`secrets` None: stand-ins for key material,
        which give the same CDS/EDS/LDS/RDS versions as the real material).

        Errors:
            ControlPlaneError: the state does not translate for this group.
        """
        key: _Key | None = None
        if state.fingerprint:
            key = (state.fingerprint, group, PLACEHOLDERS if secrets is None else id(secrets))
            with self._lock:
                known = self._memo.get(key)
            if known is not None:
                return _raise_or(known[0])
        try:
            built: Snapshot | ControlPlaneError = Snapshot.build(
                resources_of(state, group, secrets).by_type_url(),
                secret_key=self._secret_key)
        except ControlPlaneError as exc:
            built = exc
        with self._lock:
            self.renders += 1
            if key is not None:
                # The material is held with its render: its id() must not be reused.
                self._remember(key, (built, secrets))
        return _raise_or(built)

    def versions(self, state: DesiredState, group: str) -> Mapping[str, str]:
        """{type URL: version} of `group`'s snapshot of `state`, from any render of it
        (the publisher's, with real key material, serves: key material changes only
        SDS, which callers do not compare)."""
        if state.fingerprint:
            with self._lock:
                for (fingerprint, g, _), (built, _) in reversed(self._memo.items()):
                    if fingerprint == state.fingerprint and g == group:
                        return _raise_or(built).versions
        return self.snapshot(state, group).versions

    def forget(self, groups: Collection[str]) -> None:
        """Drop the renders of `groups` (forgotten: no stream, no config)."""
        gone = set(groups)
        with self._lock:
            for stale in [k for k in self._memo if k[1] in gone]:
                del self._memo[stale]

    def _remember(self, key: _Key, value: tuple[Snapshot | ControlPlaneError, object]) -> None:
        self._memo[key] = value
        self._states[key[0]] = None
        self._states.move_to_end(key[0])
        while len(self._states) > MEMO_STATES:
            gone, _ = self._states.popitem(last=False)
            for stale in [k for k in self._memo if k[0] == gone]:
                del self._memo[stale]


def _raise_or(built: Snapshot | ControlPlaneError) -> Snapshot:
    if isinstance(built, ControlPlaneError):
        raise built
    return built
