"""Every error the control plane raises on purpose, in one place.

    ControlPlaneError
    ├── InvalidInputError      bad YAML, unknown kind/field, failed validation (exit 2)
    │   └── RequestTooLargeError  a write over etcd's request size limit
    ├── NotFoundError          the named resource does not exist
    ├── ConflictError          a compare-and-swap lost, or a rule of the state forbids it
    ├── StoreUnavailableError  etcd cannot be reached
    ├── AuthenticationError    no or bad credentials
    ├── PermissionDeniedError  the principal's role does not allow the call
    ├── TranslationError       desired state cannot be turned into xDS
    ├── InconsistentSnapshotError  a snapshot names resources it does not carry
    ├── ResourceExhaustedError  a client asks for more than its share (groups, streams)
    └── ResolutionError        a DNS name did not resolve (its last good addresses stay)

The admin API maps these to gRPC status codes at its edge and names the class in the
`error-class` trailing metadata (`controlplane.contract.ERROR_CLASS_KEY`); the CLI finds
the class again with `error_class` and maps it to an exit code (2 for invalid input, 1
for everything else): by type, never by the message's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ControlPlaneError(Exception):
    """Base of every deliberate error; its message says what to do."""


@dataclass(frozen=True)
class FieldError:
    """One invalid field: where it is (`Upstream/payments: spec.timeout`) and why."""

    location: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


class InvalidInputError(ControlPlaneError):
    """The input is invalid; every problem found is listed, nothing was written."""

    def __init__(self, errors: Sequence[FieldError] | str) -> None:
        if isinstance(errors, str):
            errors = [FieldError("input", errors)]
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


class RequestTooLargeError(InvalidInputError):
    """A write is larger than etcd accepts in one request; nothing was written."""

    def __init__(self, what: str, *, size: int, limit: int | None, detail: str = "") -> None:
        self.size = size
        self.limit = limit
        bound = (f"limit {limit}" if limit is not None
                 else "over etcd's --max-request-bytes (1572864 by default)")
        super().__init__([FieldError(what, f"too large: {size} bytes, {bound} (one etcd "
                                           f"request{detail}); make it smaller")])


class NotFoundError(ControlPlaneError):
    """The named resource does not exist."""


class ConflictError(ControlPlaneError):
    """A concurrent write won, or the state forbids the change; re-read and retry."""


class StoreUnavailableError(ControlPlaneError):
    """The store (etcd) cannot be reached; nothing was written."""


class AuthenticationError(ControlPlaneError):
    """The caller presented no valid credentials."""


class PermissionDeniedError(ControlPlaneError):
    """The caller's role does not allow this call."""


class TranslationError(ControlPlaneError):
    """The desired state cannot be translated into Envoy configuration."""


class InconsistentSnapshotError(ControlPlaneError):
    """A snapshot references resources it does not contain."""


class AnalysisProviderError(ControlPlaneError):
    """A metrics provider (Prometheus) could not answer; the check is inconclusive."""


class ResourceExhaustedError(ControlPlaneError):
    """A client asked for more than the server holds for it (e.g. proxy groups without
    config); nothing was kept for the request. Retry later, or configure what it names."""


class ResolutionError(ControlPlaneError):
    """A DNS name gave no address this time (NXDOMAIN, no A/AAAA, timeout, refused)."""


def error_class(name: str) -> type[ControlPlaneError] | None:
    """The class of this hierarchy called `name` (`StoreUnavailableError`), or None."""
    pending: list[type[ControlPlaneError]] = [ControlPlaneError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending += cls.__subclasses__()
    return None
