"""A blocking admin API client for the CLI: one channel, credentials on every call."""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc

from controlplane.api import admin_pb2_grpc
from controlplane.errors import FieldError, InvalidInputError
from controlplane.spiffe import SERVER_NAME

DEFAULT_PORT = 18001
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"


@dataclass(frozen=True)
class Connection:
    """Where the admin API is and how to authenticate to it."""

    server: str
    token: str | None = None
    tls_dir: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_args(cls, server: str | None, token: str | None, tls_dir: str | None) -> Connection:
        return cls(
            server=with_default_port(
                server or os.environ.get("CONTROLPLANE_SERVER") or DEFAULT_SERVER),
            token=token or os.environ.get("CONTROLPLANE_TOKEN") or None,
            tls_dir=tls_dir or os.environ.get("CONTROLPLANE_TLS_DIR") or None,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self) -> grpc.Channel:
        if self.tls_dir:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(self.tls_dir, "ca.crt"),
                private_key=_read(self.tls_dir, "client.key"),
                certificate_chain=_read(self.tls_dir, "client.crt"),
            )
            # Our CA signs proxies' and users' certificates too: a chain to it is not
            # enough, the server must carry the name only its own certificate has
            # (`diagnose.server_identity` explains a refusal).
            return grpc.secure_channel(self.server, creds, options=(
                ("grpc.ssl_target_name_override", SERVER_NAME),))
        return grpc.insecure_channel(self.server)

    def stub(self) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel())


def with_default_port(server: str) -> str:
    """`HOST` → `HOST:18001` (the admin API's default port); `HOST:PORT`, `[V6]:PORT`
    and gRPC target URIs (`dns:///...`, `unix:...`) are kept as given."""
    if "://" in server or server.startswith("unix:"):
        return server
    if server.startswith("["):  # [::1] or [::1]:18001
        return server if "]:" in server else f"{server}:{DEFAULT_PORT}"
    if server.count(":") > 1:  # a bare IPv6 address: gRPC needs it in brackets
        return f"[{server}]:{DEFAULT_PORT}"
    return server if ":" in server else f"{server}:{DEFAULT_PORT}"


def _read(directory: str, name: str) -> bytes:
    """Errors:
    InvalidInputError: the file is missing or unreadable (`--tls-dir` is wrong).
    """
    path = os.path.join(directory, name)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidInputError([FieldError(
            "--tls-dir", f"cannot read {path}: {exc.strerror}; the directory needs ca.crt, "
            "client.crt and client.key (`controlplane cert issue --user NAME --out DIR`)")]
        ) from exc
