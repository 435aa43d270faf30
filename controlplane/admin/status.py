"""Typed errors → gRPC status codes, at the admin API's edge only.

Field errors travel in the `field-errors` trailing metadata (one `location: reason`
per entry) so the CLI can print each on its own line.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

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

FIELD_ERRORS_KEY = "field-errors"


def status_of(exc: ControlPlaneError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext, exc: ControlPlaneError) -> NoReturn:
    if isinstance(exc, InvalidInputError):
        context.set_trailing_metadata(
            tuple((FIELD_ERRORS_KEY, str(e)) for e in exc.errors)
        )
    await context.abort(status_of(exc), str(exc))
    raise AssertionError("context.abort returned")
