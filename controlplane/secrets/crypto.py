"""The key that seals secrets before they are written to etcd.

etcd holds the CA key, group keys and credential values only as Fernet tokens
(AES-128-CBC + HMAC-SHA256). The sealing key comes, in this order, from the
environment (`CONTROLPLANE_SECRETS_KEY`), from `--tls-dir/secrets.key`, or from
`--data-dir/secrets.key` (created on first start with mode 0600). Every replica
must use the same key.

Where a fingerprint of a secret is needed (has a value changed?), it is a keyed HMAC
under a key derived from the sealing key: an unsalted hash would let anyone who reads
etcd test guesses of a weak value offline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controlplane.errors import ControlPlaneError, InvalidInputError

log = logging.getLogger(__name__)

ENV_VAR = "CONTROLPLANE_SECRETS_KEY"
KEY_FILE = "secrets.key"
_FINGERPRINT_LABEL = b"controlplane/fingerprint/v1"
"""Derives the HMAC key from the sealing key, so the two are never the same bytes."""


class SealingKey:
    """Seals and unseals bytes; its repr never shows the key."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
            self._key = key
        except ValueError as exc:
            raise InvalidInputError(
                f"the secrets key is not a Fernet key (32 url-safe base64 bytes): {exc}"
            ) from None
        self._mac_key = hmac.new(base64.urlsafe_b64decode(key), _FINGERPRINT_LABEL,
                                 hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "SealingKey([redacted])"

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte key for one `purpose` (e.g. the audit chain's HMAC), derived with
        HKDF-SHA256: it reveals nothing of this key nor of any other purpose's."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"controlplane/" + purpose).derive(self._key)

    @staticmethod
    def generate() -> bytes:
        return Fernet.generate_key()

    def seal(self, data: bytes) -> str:
        return self._fernet.encrypt(data).decode()

    def fingerprint(self, data: bytes) -> str:
        """HMAC-SHA256 of `data` under a key derived from this one, as hex: equal for
        equal data, useless to whoever lacks the key."""
        return hmac.new(self._mac_key, data, hashlib.sha256).hexdigest()

    def unseal(self, token: str) -> bytes:
        """Errors:
        ControlPlaneError: sealed with another key, or corrupted.
        """
        try:
            return self._fernet.decrypt(token.encode())
        except InvalidToken:
            raise ControlPlaneError(
                "a secret in etcd cannot be unsealed: was it sealed with another "
                f"{ENV_VAR} / {KEY_FILE}? every replica needs the same key"
            ) from None

    @classmethod
    def load(
        cls,
        *,
        tls_dir: Path | None,
        data_dir: Path,
        environ: Mapping[str, str] | None = None,
    ) -> SealingKey:
        """The key from the environment, --tls-dir or --data-dir (created there if absent)."""
        env = os.environ if environ is None else environ
        if env.get(ENV_VAR):
            return cls(env[ENV_VAR].encode())
        if tls_dir is not None and (tls_dir / KEY_FILE).exists():
            return cls((tls_dir / KEY_FILE).read_bytes().strip())
        path = data_dir / KEY_FILE
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(cls.generate())
            log.warning("created %s; set %s or put %s in --tls-dir to share it between "
                        "replicas", path, ENV_VAR, KEY_FILE)
        return cls(path.read_bytes().strip())
