"""What the vault stores under `{prefix}/vault/`: JSON with every secret sealed.

    vault/ca                  {"cert": PEM, "key": sealed PEM}
    vault/ca-previous         {"cert": PEM, "serial", "rotatedAt"}: during a CA rotation,
                              the CA that stays trusted until every proxy has ACKed
                              certificates of the new one (no key: it issues nothing)
    vault/certs/{group}       {"cert", "key" (sealed), "serial", "notBefore", "notAfter",
                              "rotateAt"}: the group's serving certificate
    vault/credentials/{name}  {"value" (sealed), "source", "generation", "rotatedAt",
                              "revoked" (sealed values)}: a Credential's current value;
                              `source` is a keyed HMAC of the resource's value source, so
                              re-applying it with another source re-reads the value, and a
                              rotation survives re-applies; `revoked` holds the values
                              `credential rotate --emergency` replaced, never sent again
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from pydantic import SecretBytes, SecretStr

from controlplane.model import Credential
from controlplane.secrets.ca import IssuedCertificate
from controlplane.secrets.crypto import SealingKey


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def encode_ca(cert_pem: str, key_pem: SecretBytes, sealing: SealingKey) -> bytes:
    return _dump({"cert": cert_pem, "key": sealing.seal(key_pem.get_secret_value())})


def decode_ca(raw: bytes, sealing: SealingKey) -> tuple[str, bytes]:
    data = json.loads(raw)
    return str(data["cert"]), sealing.unseal(str(data["key"]))


@dataclass(frozen=True)
class PreviousCa:
    """A retiring CA: still in trust bundles, issuing nothing."""

    cert_pem: str
    serial: str
    rotated_at: float


def encode_previous_ca(record: PreviousCa) -> bytes:
    return _dump({"cert": record.cert_pem, "serial": record.serial,
                  "rotatedAt": record.rotated_at})


def decode_previous_ca(raw: bytes) -> PreviousCa:
    data = json.loads(raw)
    return PreviousCa(str(data["cert"]), str(data["serial"]), float(data["rotatedAt"]))


@dataclass(frozen=True)
class CertRecord:
    cert: IssuedCertificate
    rotate_at: float


def encode_cert(record: CertRecord, sealing: SealingKey) -> bytes:
    c = record.cert
    return _dump({
        "cert": c.cert_pem, "key": sealing.seal(c.key_pem.get_secret_value()),
        "serial": c.serial, "notBefore": c.not_before, "notAfter": c.not_after,
        "rotateAt": record.rotate_at,
    })


def decode_cert(raw: bytes, sealing: SealingKey) -> CertRecord:
    data = json.loads(raw)
    cert = IssuedCertificate(
        cert_pem=str(data["cert"]), key_pem=SecretBytes(sealing.unseal(str(data["key"]))),
        serial=str(data["serial"]), not_before=float(data["notBefore"]),
        not_after=float(data["notAfter"]),
    )
    return CertRecord(cert, float(data["rotateAt"]))


@dataclass(frozen=True)
class CredentialRecord:
    value: SecretStr
    source: str
    generation: int
    rotated_at: float
    revoked: tuple[SecretStr, ...] = ()
    """Values an emergency rotation replaced: refused from then on."""

    def is_revoked(self, value: SecretStr) -> bool:
        wanted = value.get_secret_value().encode()
        return any(hmac.compare_digest(wanted, r.get_secret_value().encode())
                   for r in self.revoked)


def encode_credential(record: CredentialRecord, sealing: SealingKey) -> bytes:
    data: dict[str, Any] = {
        "value": sealing.seal(record.value.get_secret_value().encode()),
        "source": record.source, "generation": record.generation,
        "rotatedAt": record.rotated_at,
    }
    if record.revoked:
        data["revoked"] = [sealing.seal(r.get_secret_value().encode()) for r in record.revoked]
    return _dump(data)


def decode_credential(raw: bytes, sealing: SealingKey) -> CredentialRecord:
    data = json.loads(raw)
    return CredentialRecord(
        value=SecretStr(sealing.unseal(str(data["value"])).decode()),
        source=str(data["source"]), generation=int(data["generation"]),
        rotated_at=float(data["rotatedAt"]),
        revoked=tuple(SecretStr(sealing.unseal(str(r)).decode())
                      for r in data.get("revoked", ())),
    )


def _source_text(credential: Credential) -> bytes:
    spec = credential.spec
    if spec.value is not None:
        return b"value:" + spec.value.get_secret_value().encode()
    assert spec.value_from is not None  # the model requires exactly one
    return b"file:" + spec.value_from.file.encode()


SOURCE_HMAC = "hmac:"
"""Marks a keyed source fingerprint (records written before it hold a bare SHA-256)."""


def source_digest(credential: Credential, sealing: SealingKey) -> str:
    """Which value source the resource names: a keyed HMAC (never the value, nor a hash
    of it that a guess could be checked against)."""
    return SOURCE_HMAC + sealing.fingerprint(_source_text(credential))[:32]


def legacy_source_digest(credential: Credential) -> str:
    """The unsalted SHA-256 that records held before `source_digest`: only to recognise
    (and rewrite) such records, never written."""
    return hashlib.sha256(_source_text(credential)).hexdigest()[:16]
