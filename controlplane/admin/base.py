"""What every part of the admin service shares: the store, the caller's identity, errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import grpc

from controlplane.admin.auth import Authenticator, LocalAuthenticator, Role
from controlplane.admin.status import abort_with
from controlplane.api import admin_pb2
from controlplane.errors import ControlPlaneError
from controlplane.model import DesiredState
from controlplane.store import Store

ProxiesProvider = Callable[[], Sequence[admin_pb2.Proxy]]
XdsDiff = Callable[[DesiredState, DesiredState], Mapping[str, str]]
_T = TypeVar("_T")


class AdminBase:
    """Implements controlplane.admin.v1.Admin over a `Store`.

    Args:
        store: where desired state lives; it validates the whole state and audits.
        proxies: the proxies connected to this replica (from the xDS server).
        xds_diff: for `apply --dry-run`, the xDS each group would get, as diffs.
        authenticator: identifies callers; roles gate each call.
    """

    def __init__(
        self,
        store: Store,
        *,
        proxies: ProxiesProvider,
        xds_diff: XdsDiff | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._store = store
        self._proxies = proxies
        self._xds_diff = xds_diff
        self._auth = authenticator or LocalAuthenticator()

    async def _guard(
        self,
        context: grpc.aio.ServicerContext,
        role: Role,
        action: str,
        call: Callable[[str], Awaitable[_T]],
    ) -> _T:
        try:
            principal = await self._auth.authenticate(context)
            principal.require(role, action)
            return await call(principal.name)
        except ControlPlaneError as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc

