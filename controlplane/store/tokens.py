"""Bearer tokens in etcd, kept only as their SHA-256: `{prefix}/tokens/{sha256 hex}`.
Created, listed (name, role, creation time) and revoked by name.

The token itself is shown once, to its creator, and written nowhere: not in etcd,
not in the audit log (which records the token's name, its role and who created it).

With a signing key (`Store.key_tokens`, derived from the sealing key, which etcd never
holds) each record carries an HMAC over its digest, name, role and creation time: a
record put into etcd behind the API's back, or one whose role was edited there, has no
valid MAC and is ignored, so whoever can write etcd still cannot mint a token.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from controlplane.errors import ConflictError, FieldError, InvalidInputError, NotFoundError
from controlplane.store.audit import AuditRecord
from controlplane.store.store import Store

log = logging.getLogger(__name__)

ROLES = ("viewer", "operator", "admin")
TOKEN_PREFIX = "cpt_"
"""Every token starts with it: never with "-" (`--token -x...` would read as a missing
value; token_urlsafe starts with "-" one time in 64), and secret scanners can spot it."""
CREATE_ATTEMPTS = 5
TOKEN_KEY_PURPOSE = b"token-records/v1"
"""What the token signing key is derived for (`SealingKey.derive`)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


def digest(token: str) -> str:
    """The SHA-256 hex digest a token is stored (and looked up) under."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """What etcd holds for a token: never the token itself."""

    name: str
    role: str
    created: float
    mac: str = ""
    """HMAC of (digest, name, role, created) under the token key; "" if written unkeyed."""

    def to_json(self) -> bytes:
        fields = asdict(self)
        if not self.mac:
            del fields["mac"]  # unkeyed (tests, tools): the record as it always was
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: bytes, token_digest: str) -> TokenRecord:
        """This record with its MAC under `key`, for the token whose digest it is."""
        return TokenRecord(self.name, self.role, self.created, _mac(key, token_digest, self))

    def valid(self, key: bytes, token_digest: str) -> bool:
        """Whether the record was signed under `key` for this digest, as it is now."""
        return bool(self.mac) and hmac.compare_digest(
            self.mac, _mac(key, token_digest, self))

    @classmethod
    def from_json(cls, raw: bytes) -> TokenRecord:
        """Errors:
        ValueError: not a token record (edited by hand, or written by a newer version).
        """
        try:
            data = json.loads(raw)
            record = cls(name=str(data["name"]), role=str(data["role"]),
                         created=float(data["created"]), mac=str(data.get("mac", "")))
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a token record: {exc}") from exc
        if record.role not in ROLES:
            raise ValueError(f"unknown role {record.role!r}")
        return record


def _mac(key: bytes, token_digest: str, record: TokenRecord) -> str:
    signed = json.dumps([token_digest, record.name, record.role, record.created])
    return hmac.new(key, signed.encode(), hashlib.sha256).hexdigest()


class TokenStore:
    """Create and look up bearer tokens on top of a `Store` (its KV, prefix, audit and,
    once the server set it, its token signing key)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.prefix = f"{store.keys.prefix}/tokens/".encode()

    def key(self, token_digest: str) -> bytes:
        return self.prefix + token_digest.encode()

    def _trusted(self, key: bytes, record: TokenRecord) -> bool:
        signing = self._store.token_key
        if signing is None or record.valid(signing, key[len(self.prefix):].decode()):
            return True
        log.warning("ignoring token record %r (%s): its MAC does not match, so it was "
                    "not written by the admin API (written or edited in etcd directly?)",
                    record.name[:64], record.role[:16])
        return False

    async def lookup(self, token: str) -> TokenRecord | None:
        """The record of `token`, or None when it is unknown, unreadable or unsigned."""
        key = self.key(digest(token))
        got = await self._store.kv.get(key)
        if got is None:
            return None
        try:
            record = TokenRecord.from_json(got.value)
        except ValueError:
            return None
        return record if self._trusted(key, record) else None

    async def sign_unsigned(self, *, actor: str) -> int:
        """Sign the records written before tokens were signed (no MAC at all), each
        audited; a record whose MAC is wrong stays ignored. Returns how many were signed.
        Trust on first start, as an upgrade must: run it before etcd is exposed."""
        signing = self._store.token_key
        if signing is None:
            return 0
        signed = 0
        for kv in (await self._store.kv.range(self.prefix)).kvs:
            try:
                record = TokenRecord.from_json(kv.value)
            except ValueError:
                continue
            if record.mac:
                continue
            token_digest = kv.key[len(self.prefix):].decode()
            audit = AuditRecord(actor=actor, action="token/sign", kind="Token",
                                name=record.name, reason=f"role {record.role}")
            done = await self._store.commit(
                puts={kv.key: record.signed(signing, token_digest).to_json()},
                expect={kv.key: kv.mod_revision}, audit=[audit])
            signed += done is not None
        return signed

    async def list(self) -> list[TokenRecord]:
        """Every readable token record (unreadable ones are skipped), by name."""
        return [record for _, _, record in await self._entries()]

    async def _entries(self) -> Sequence[tuple[bytes, int, TokenRecord]]:
        """(key, mod revision, record) of every readable token, by name."""
        entries: builtins.list[tuple[bytes, int, TokenRecord]] = []
        for kv in (await self._store.kv.range(self.prefix)).kvs:
            try:
                record = TokenRecord.from_json(kv.value)
            except ValueError:
                continue
            if self._trusted(kv.key, record):
                entries.append((kv.key, kv.mod_revision, record))
        return sorted(entries, key=lambda e: (e[2].name, e[2].created))

    async def revoke(self, name: str, *, actor: str) -> tuple[TokenRecord, Sequence[str]]:
        """Delete the token named `name`, audited by `actor`. Returns its record and the
        digests deleted (for the caller's lookup cache).

        Errors:
            NotFoundError: no token has that name.
            ConflictError: it is the last admin token (with none left no one could
                create tokens, and an empty store puts the server back in loopback
                bootstrap mode: create another admin token first), or writers kept
                winning.
        """
        for _ in range(CREATE_ATTEMPTS):
            entries = await self._entries()
            named = [(key, rev, r) for key, rev, r in entries if r.name == name]
            if not named:
                known = ", ".join(r.name for _, _, r in entries) or "none"
                raise NotFoundError(f"no token named {name!r} (tokens: {known}); "
                                    "`controlplane token list` shows them")
            admins = [(key, rev) for key, rev, r in entries if r.role == "admin"]
            if any(r.role == "admin" for _, _, r in named) and len(admins) <= len(
                    [1 for _, _, r in named if r.role == "admin"]):
                raise ConflictError(f"{name} is the last admin token: create another "
                                    "admin token first, then revoke this one")
            record = named[0][2]
            audit = AuditRecord(actor=actor, action="token/revoke", kind="Token", name=name,
                                reason=f"role {record.role}",
                                before={"name": name, "role": record.role})
            # Every admin token must be as read: two admins revoking the last two admin
            # tokens at once cannot both succeed.
            expect = {key: rev for key, rev in admins} | {key: rev for key, rev, _ in named}
            revision = await self._store.commit(puts={}, expect=expect, audit=[audit],
                                                deletes=[key for key, _, _ in named])
            if revision is not None:
                prefix = len(self.prefix)
                return record, [key[prefix:].decode() for key, _, _ in named]
        raise ConflictError("other writers kept changing the tokens; revoke it again")

    async def exist(self) -> bool:
        """Whether any token is stored, readable or not (then tokens are required)."""
        return bool((await self._store.kv.range(self.prefix)).kvs)

    async def create(self, *, role: str, name: str, actor: str) -> tuple[str, TokenRecord]:
        """A new random token with `role`, stored hashed; its creation audited by `actor`.

        Returns the token (shown once) and its record. An empty `name` gets `ROLE-xxxxxx`.

        Errors:
            InvalidInputError: unknown role, or a name that is not `[A-Za-z0-9._-]`.
            ConflictError: a token with that name exists, or writers kept winning.
        """
        problems = []
        if role not in ROLES:
            problems.append(FieldError("--role", f"{role!r} is not a role: use viewer, "
                                                 "operator or admin"))
        if name and not _NAME.match(name):
            problems.append(FieldError("--name", f"{name!r}: use 1-63 letters, digits, '.', "
                                                 "'_' or '-', starting with a letter or digit"))
        if problems:
            raise InvalidInputError(problems)
        name = name or f"{role}-{secrets.token_hex(3)}"
        for _ in range(CREATE_ATTEMPTS):
            # Best effort: two admins racing on one name could both win; names only label.
            if any(r.name == name for r in await self.list()):
                raise ConflictError(f"a token named {name} exists; pick another --name")
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            record = TokenRecord(name=name, role=role, created=time.time())
            if self._store.token_key is not None:
                record = record.signed(self._store.token_key, digest(token))
            key = self.key(digest(token))
            audit = AuditRecord(actor=actor, action="token/create", kind="Token", name=name,
                                reason=f"role {role}", after={"name": name, "role": role})
            revision = await self._store.commit(puts={key: record.to_json()}, expect={key: 0},
                                                audit=[audit])
            if revision is not None:
                return token, record
        raise ConflictError("other writers kept changing the store; create the token again")
