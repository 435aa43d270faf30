"""Revoked client certificates, by serial: `{prefix}/revoked-certificates/{serial}`.

A certificate from our CA (a proxy's for xDS, a user's for the admin API) is good
until it expires; `controlplane cert revoke --serial S` ends it sooner. Every replica
keeps the revoked serials in memory (`RevokedSerials`, refreshed from etcd every
`REFRESH_S`), refuses new connections that present one, and ends the xDS streams
already open with one.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from controlplane.errors import ConflictError, FieldError, InvalidInputError
from controlplane.store.audit import AuditRecord
from controlplane.store.store import Store

REFRESH_S = 2.0
"""How often a replica re-reads the revoked serials (the revoking one knows at once)."""
_SERIAL = re.compile(r"[0-9a-f]{1,40}\Z")


def normal_serial(text: str) -> str:
    """A serial as our CA writes it: lowercase hex, no `0x`, no colons.

    Errors:
        InvalidInputError: not a hexadecimal serial.
    """
    serial = text.strip().lower().replace(":", "").removeprefix("0x").lstrip("0") or "0"
    if not _SERIAL.match(serial):
        raise InvalidInputError([FieldError(
            "--serial", f"{text!r} is not a certificate serial (hexadecimal, as `cert "
                        "issue` prints it and the audit log's cert/issue entries record)")])
    return serial


@dataclass(frozen=True)
class Revocation:
    serial: str
    reason: str
    revoked: float

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


class RevocationStore:
    """Revoke certificates and read the revoked serials, on top of a `Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.prefix = f"{store.keys.prefix}/revoked-certificates/".encode()

    async def serials(self) -> frozenset[str]:
        """Every revoked serial."""
        got = await self._store.kv.range(self.prefix)
        return frozenset(kv.key[len(self.prefix):].decode() for kv in got.kvs)

    async def revoke(self, serial: str, *, reason: str, actor: str) -> tuple[str, bool]:
        """Revoke `serial` (normalized), audited by `actor`. Returns (serial, whether it
        was revoked already: then nothing is written).

        Errors:
            InvalidInputError: not a serial.
            ConflictError: other writers kept winning.
        """
        serial = normal_serial(serial)
        key = self.prefix + serial.encode()
        for _ in range(5):
            if await self._store.kv.get(key) is not None:
                return serial, True
            record = Revocation(serial=serial, reason=reason, revoked=time.time())
            audit = AuditRecord(actor=actor, action="cert/revoke", kind="Certificate",
                                name=serial, reason=reason, after={"serial": serial})
            if await self._store.commit(puts={key: record.to_json()}, expect={key: 0},
                                        audit=[audit]) is not None:
                return serial, False
        raise ConflictError("other writers kept changing the store; revoke it again")


class RevokedSerials:
    """This replica's copy of the revoked serials: read without I/O on every handshake
    check; `add` for one revoked here, `refresh` from etcd for the others'. Listeners
    hear of each newly revoked serial (to end streams open with it)."""

    def __init__(self) -> None:
        self._serials: frozenset[str] = frozenset()
        self._listeners: list[Callable[[frozenset[str]], None]] = []

    def __contains__(self, serial: object) -> bool:
        return serial in self._serials

    def listen(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Call `listener(newly revoked serials)` after each change."""
        self._listeners.append(listener)

    def add(self, serials: frozenset[str]) -> None:
        new = serials - self._serials
        if new:
            self._serials = self._serials | new
            for listener in self._listeners:
                listener(new)

    async def refresh(self, store: RevocationStore) -> None:
        self.add(await store.serials())
