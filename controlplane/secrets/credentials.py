"""Credential rotations: what one did, and the checks that keep it honest.

A rotation must change the value Envoy sends: one that would send the same value again
(an inline value rotated without a new one, a file not yet rewritten) is refused, so
`--emergency` never claims to revoke a value that is still sent. Values an emergency
rotation replaced are refused for ever after.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from controlplane.errors import FieldError, InvalidInputError
from controlplane.model import Credential
from controlplane.secrets.records import CredentialRecord


@dataclass(frozen=True)
class CredentialRotation:
    """What `rotate_credential` did: the generation Envoy is sent now, the one it replaced
    (0: none, a first load) and whether that one was revoked."""

    name: str
    generation: int
    previous_generation: int
    revoked: bool


def check_new_value(credential: Credential, old: CredentialRecord, value: SecretStr, *,
                    given: bool, emergency: bool) -> None:
    """Errors:
        InvalidInputError: `value` is what generation `old` sends already, or was revoked.
    """
    name = credential.metadata.name
    if old.is_revoked(value):
        raise InvalidInputError([FieldError(
            "--from-file" if given else f"Credential/{name}",
            "this value was revoked by an emergency rotation and is never sent again; "
            "give a new value")])
    if value.get_secret_value() != old.value.get_secret_value():
        return
    unrevoked = " Nothing was revoked." if emergency else ""
    spec = credential.spec
    if given:
        where, why = "--from-file", (
            f"the file holds the value generation {old.generation} already sends, so the "
            f"rotation would change nothing; put the new value in it.{unrevoked}")
    elif spec.value_from is not None:
        where, why = f"Credential/{name}: spec.valueFrom.file", (
            f"{spec.value_from.file} still holds the value generation {old.generation} "
            "sends, so the rotation would change nothing; write the new value to that file "
            f"first, or give it with --from-file FILE.{unrevoked}")
    else:
        where, why = f"Credential/{name}: spec.value", (
            f"the value is inline and generation {old.generation} sends it already, so the "
            "rotation would change nothing; give the new value with --from-file FILE (or "
            f"apply the Credential with a new value).{unrevoked}")
    raise InvalidInputError([FieldError(where, why)])
