"""Who is calling the admin API, and what their role lets them do.

Roles (README, "Who may do what"): viewer (get, status, audit) < operator (rollout
verbs, rotate) < admin (apply, delete). Every mutation is audited with the principal's name.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import grpc

from controlplane.errors import AuthenticationError, PermissionDeniedError
from controlplane.store import Store
from controlplane.store.tokens import TokenRecord, TokenStore, digest


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


@dataclass(frozen=True)
class Principal:
    """An authenticated caller; `name` goes into the audit log."""

    name: str
    role: Role

    def require(self, role: Role, action: str) -> None:
        """Errors:
        PermissionDeniedError: the principal's role is below `role`.
        """
        if self.role < role:
            raise PermissionDeniedError(
                f"{self.name} has role {self.role.name.lower()}; {action} needs "
                f"{role.name.lower()}: ask an admin for a token with that role"
            )


class Authenticator(Protocol):
    """Turns a call's credentials into a principal, or raises AuthenticationError."""

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal: ...


class LocalAuthenticator:
    """No credentials configured: the server listens on loopback only, and every local
    caller acts as admin, named after its peer address in the audit log."""

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        return Principal(name=f"local:{context.peer()}", role=Role.ADMIN)


CACHE_TTL_S = 5.0
_CACHE_MAX = 4096
_NEEDS_TOKEN = ("pass --token or set CONTROLPLANE_TOKEN (an admin makes one with "
                "`controlplane token create`)")


class TokenAuthenticator:
    """Bearer tokens (`authorization: Bearer <token>`) looked up by hash in etcd.

    While no token exists, loopback callers act as admin named `local:<peer>`, so the
    first `controlplane token create` works from the server's host. Once any token
    exists, every call needs a valid one. Lookups are cached for `cache_ttl` seconds
    (a revoked token may work that long); a token created on this replica is
    remembered at once, and "no token yet" is never cached, so bootstrap mode ends
    on every replica as soon as the first token is written.
    """

    def __init__(self, store: Store, *, cache_ttl: float = CACHE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens = TokenStore(store)
        self._ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}  # digest → (until, rec)
        self._exist_until = 0.0

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        """Errors:
        AuthenticationError: a bad token, no token where one is needed, or a remote
            caller while the server is still in loopback bootstrap mode.
        """
        token = bearer_token(context.invocation_metadata())
        if token is not None:
            record = await self._lookup(token)
            if record is None:
                raise AuthenticationError(f"the bearer token is not valid; {_NEEDS_TOKEN}")
            return Principal(name=f"token:{record.name}", role=Role[record.role.upper()])
        if await self._tokens_exist():
            raise AuthenticationError(f"this server requires a bearer token: {_NEEDS_TOKEN}")
        peer = context.peer()
        if not is_loopback(peer):
            raise AuthenticationError(
                "no token exists yet, so only loopback callers are admitted: run "
                "`controlplane token create --role admin` on the server's host"
            )
        return Principal(name=f"local:{peer}", role=Role.ADMIN)

    def remember(self, token: str, record: TokenRecord) -> None:
        """A token this replica just created: valid here at once, bootstrap mode over."""
        now = self._clock()
        self._put(digest(token), record, now)
        self._exist_until = now + self._ttl

    def forget(self, digests: Iterable[str]) -> None:
        """Tokens this replica just revoked: refused here at once (other replicas' caches
        keep them for `cache_ttl` at most)."""
        for key in digests:
            self._cache.pop(key, None)

    async def mode(self) -> str:
        """For the startup line: whether tokens are required yet."""
        if await self._tokens.exist():
            return "bearer tokens required"
        return ("loopback bootstrap mode: no token yet, loopback callers act as admin until "
                "`controlplane token create --role admin`")

    async def _lookup(self, token: str) -> TokenRecord | None:
        key, now = digest(token), self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self._tokens.lookup(token)
        self._put(key, record, now)
        return record

    def _put(self, key: str, record: TokenRecord | None, now: float) -> None:
        if len(self._cache) >= _CACHE_MAX:  # bounded: a flood of bad tokens cannot grow it
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
        self._cache[key] = (now + self._ttl, record)

    async def _tokens_exist(self) -> bool:
        now = self._clock()
        if self._exist_until > now:
            return True
        if await self._tokens.exist():
            self._exist_until = now + self._ttl
            return True
        return False


class CertificateAuthenticator:
    """mTLS on the admin port (`serve --tls-dir`): a bearer token, if the call carries one,
    decides; otherwise the client certificate does. A user certificate names its holder
    and role in its SPIFFE URI SAN (`spiffe://controlplane/user/<name>/<role>`, issued by
    `controlplane cert issue --user NAME --role ROLE`); a proxy's certificate is no way in.
    """

    def __init__(self, tokens: TokenAuthenticator,
                 revoked: Container[str] = frozenset()) -> None:
        self._tokens = tokens
        self.revoked = revoked
        """Serials of revoked certificates (`cert revoke`): no way in with one of those."""

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        """Errors:
        AuthenticationError: a bad token, a revoked certificate, or a certificate that
            names no admin user.
        """
        from controlplane.xds.identity import peer_serial

        serial = peer_serial(context)
        if serial and serial in self.revoked:
            raise AuthenticationError(
                f"this client certificate (serial {serial}) was revoked: ask an admin for "
                "a new one (`controlplane cert issue --user NAME --role ROLE`)")
        if bearer_token(context.invocation_metadata()) is not None:
            return await self._tokens.authenticate(context)
        pems = context.auth_context().get("x509_pem_cert") or []
        user = user_of_certificate(pems[0]) if pems else None
        if user is None:
            raise AuthenticationError(
                "the client certificate names no admin user (spiffe://controlplane/user/"
                "<name>/<role>): use one from `controlplane cert issue --user NAME --role "
                "ROLE`, or pass --token")
        return Principal(name=f"cert:{user[0]}", role=user[1])

    def remember(self, token: str, record: TokenRecord) -> None:
        self._tokens.remember(token, record)

    def forget(self, digests: Iterable[str]) -> None:
        self._tokens.forget(digests)

    async def mode(self) -> str:
        return "mTLS: a user certificate or a bearer token required"


def user_of_certificate(pem: bytes) -> tuple[str, Role] | None:
    """(name, role) of the admin user a certificate's SPIFFE URI SAN names, or None."""
    from controlplane.spiffe import USER_PREFIX
    from controlplane.xds.identity import group_of_certificate

    name, _, role = (group_of_certificate(pem, USER_PREFIX) or "").partition("/")
    if name and role.upper() in Role.__members__:
        return name, Role[role.upper()]
    return None


def bearer_token(metadata: Iterable[Any] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header, if there is one."""
    for item in metadata or ():
        key, value = item[0], item[1]
        if key.lower() != "authorization":
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def is_loopback(peer: str) -> bool:
    """Whether a gRPC peer (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`, `unix:…`) is local."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("unix", "unix-abstract"):
        return True
    if scheme not in ("ipv4", "ipv6"):
        return False
    host = rest.rpartition(":")[0].strip("[]").partition("%")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
