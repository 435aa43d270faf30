"""Inline Credential values, sealed before they reach etcd.

A Credential with `spec.value` is stored with `spec.valueSealed` instead: the value
sealed by the `Sealer` (the wiring's sealing key, controlplane.secrets.crypto), so etcd
(its keys, MVCC history, WAL and db file) never holds it in clear. The store opens it
again on every read, so the model, translate and SDS see the real value and `get`
still prints `[redacted]`. Re-sealing the same value gives other bytes (a random
nonce): `seal_stored` keeps the stored seal when it still holds the same value, so a
re-apply stays "unchanged".
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Protocol

from controlplane.errors import ControlPlaneError

SEALED = "valueSealed"
_KIND = b'"kind":"Credential"'


class Sealer(Protocol):
    """Seals and unseals bytes (SealingKey is one)."""

    def seal(self, data: bytes) -> str: ...

    def unseal(self, token: str) -> bytes: ...


def _no_sealer() -> ControlPlaneError:
    return ControlPlaneError("this store has no sealing key, so it neither stores an inline "
                             "Credential value nor reads one; connect it with sealer=")


def _credential_spec(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if _KIND not in raw:  # most resources: no JSON parse
        return None
    doc = json.loads(raw)
    if doc.get("kind") != "Credential" or not isinstance(doc.get("spec"), dict):
        return None
    return doc, doc["spec"]


def _dump(doc: dict[str, Any]) -> bytes:
    # The same canonical form as model.to_stored.
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def is_clear(raw: bytes) -> bool:
    """Whether stored bytes hold an inline Credential value in clear."""
    parsed = _credential_spec(raw)
    return parsed is not None and "value" in parsed[1]


def seal_stored(raw: bytes, sealer: Sealer | None, *, previous: bytes | None = None) -> bytes:
    """`raw` (model.to_stored) with an inline Credential value sealed; other resources
    unchanged. `previous`: what the key holds now; its seal is kept if it holds the same
    value.

    Errors:
        ControlPlaneError: there is a value to seal and no sealer.
    """
    parsed = _credential_spec(raw)
    if parsed is None or "value" not in parsed[1]:
        return raw
    if sealer is None:
        raise _no_sealer()
    doc, spec = parsed
    value = str(spec.pop("value")).encode()
    old = _credential_spec(previous) if previous is not None else None
    token = old[1].get(SEALED) if old is not None else None
    if not (isinstance(token, str) and _holds(sealer, token, value)):
        token = sealer.seal(value)
    spec[SEALED] = token
    return _dump(doc)


def _holds(sealer: Sealer, token: str, value: bytes) -> bool:
    try:
        return hmac.compare_digest(sealer.unseal(token), value)
    except ControlPlaneError:  # sealed with another key: seal afresh
        return False


def open_stored(raw: bytes, sealer: Sealer | None) -> bytes:
    """Stored bytes as model.from_stored reads them: a sealed value opened.

    Errors:
        ControlPlaneError: a value is sealed and there is no sealer, or it was sealed
            with another key.
    """
    parsed = _credential_spec(raw)
    if parsed is None or SEALED not in parsed[1]:
        return raw
    if sealer is None:
        raise _no_sealer()
    doc, spec = parsed
    spec["value"] = sealer.unseal(str(spec.pop(SEALED))).decode()
    return _dump(doc)
