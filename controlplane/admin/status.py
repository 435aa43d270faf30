"""Typed errors → gRPC status codes, at the admin API's edge only.

Every refusal names its class in the `error-class` trailing metadata
(`StoreUnavailableError`) so a client maps it by type, not by text. Field errors travel
in the `field-errors` trailing metadata (one `location: reason` per entry) so the CLI
can print each on its own line.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from controlplane.contract import ERROR_CLASS_KEY, FIELD_ERRORS_KEY
from controlplane.errors import (
    AuthenticationError,
    ConflictError,
    ControlPlaneError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailableError,
)

STATUS: dict[type[ControlPlaneError], grpc.StatusCode] = {
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    ConflictError: grpc.StatusCode.FAILED_PRECONDITION,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}


def status_of(exc: ControlPlaneError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext, exc: ControlPlaneError) -> NoReturn:
    trailers = [(ERROR_CLASS_KEY, type(exc).__name__)]
    if isinstance(exc, InvalidInputError):
        trailers += [(FIELD_ERRORS_KEY, str(e)) for e in exc.errors]
    context.set_trailing_metadata(tuple(trailers))
    await context.abort(status_of(exc), str(exc))
    raise AssertionError("context.abort returned")
