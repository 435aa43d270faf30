"""Bearer tokens in etcd, kept only as their SHA-256: `{prefix}/tokens/{sha256 hex}`.
Created, listed (name, role, creation time) and revoked by name.

The token itself is shown once, to its creator, and written nowhere: not in etcd,
not in the audit log (which records the token's name, its role and who created it).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from controlplane.errors import ConflictError, FieldError, InvalidInputError, NotFoundError
from controlplane.store.audit import AuditRecord
from controlplane.store.store import Store

ROLES = ("viewer", "operator", "admin")
TOKEN_PREFIX = "cpt_"
"""Every token starts with it: never with "-" (`--token -x...` would read as a missing
value; token_urlsafe starts with "-" one time in 64), and secret scanners can spot it."""
CREATE_ATTEMPTS = 5
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

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TokenRecord:
        """Errors:
        ValueError: not a token record (edited by hand, or written by a newer version).
        """
        try:
            data = json.loads(raw)
            record = cls(name=str(data["name"]), role=str(data["role"]),
                         created=float(data["created"]))
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a token record: {exc}") from exc
        if record.role not in ROLES:
            raise ValueError(f"unknown role {record.role!r}")
        return record


class TokenStore:
    """Create and look up bearer tokens on top of a `Store` (its KV, prefix and audit)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.prefix = f"{store.keys.prefix}/tokens/".encode()

    def key(self, token_digest: str) -> bytes:
        return self.prefix + token_digest.encode()

    async def lookup(self, token: str) -> TokenRecord | None:
        """The record of `token`, or None when it is unknown (or unreadable)."""
        got = await self._store.kv.get(self.key(digest(token)))
        if got is None:
            return None
        try:
            return TokenRecord.from_json(got.value)
        except ValueError:
            return None

    async def list(self) -> list[TokenRecord]:
        """Every readable token record (unreadable ones are skipped), by name."""
        return [record for _, _, record in await self._entries()]

    async def _entries(self) -> Sequence[tuple[bytes, int, TokenRecord]]:
        """(key, mod revision, record) of every readable token, by name."""
        entries: builtins.list[tuple[bytes, int, TokenRecord]] = []
        for kv in (await self._store.kv.range(self.prefix)).kvs:
            try:
                entries.append((kv.key, kv.mod_revision, TokenRecord.from_json(kv.value)))
            except ValueError:
                continue
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
            key = self.key(digest(token))
            audit = AuditRecord(actor=actor, action="token/create", kind="Token", name=name,
                                reason=f"role {role}", after={"name": name, "role": role})
            revision = await self._store.commit(puts={key: record.to_json()}, expect={key: 0},
                                                audit=[audit])
            if revision is not None:
                return token, record
        raise ConflictError("other writers kept changing the store; create the token again")
