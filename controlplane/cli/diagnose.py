"""What is behind `--server` when it does not answer as the admin API.

A gRPC server that says UNIMPLEMENTED to an admin call is most often the xDS port
(`serve --xds-addr`, 18000 by default) given where the admin port belongs. Two cheap
probes tell the cases apart, so the error names the cause instead of "unimplemented".
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from controlplane.api import admin_pb2
from controlplane.cli.client import DEFAULT_SERVER, Connection
from controlplane.errors import ControlPlaneError, FieldError, InvalidInputError

PROBE_TIMEOUT_S = 2.0
_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def _has(call: Callable[[], object]) -> bool:
    """Whether the server has the method `call` uses: any answer but UNIMPLEMENTED,
    a refusal included."""
    try:
        call()
    except grpc.RpcError as exc:
        return bool(exc.code() != grpc.StatusCode.UNIMPLEMENTED)
    return True


def _admin_get(conn: Connection) -> object:
    return conn.stub().Get(admin_pb2.GetRequest(kind="upstreams"), metadata=conn.metadata(),
                           timeout=PROBE_TIMEOUT_S)


def _ads_open(conn: Connection) -> object:
    """Opens an ADS stream and half-closes it at once: an xDS server ends it, any other
    server says UNIMPLEMENTED."""
    ads = conn.channel().stream_stream(_ADS)
    return list(ads(iter(()), timeout=PROBE_TIMEOUT_S))


def unimplemented(conn: Connection, details: str) -> ControlPlaneError:
    """The error for an admin call `conn.server` answered UNIMPLEMENTED.

    Returns:
        InvalidInputError (bad usage, exit 2) when `--server` is not the admin API (the
        xDS port, or some other gRPC server); a ControlPlaneError (exit 1) when it is the
        admin API of an older controlplane that lacks this one call.
    """
    if _has(lambda: _admin_get(conn)):
        return ControlPlaneError(
            f"{conn.server} runs the admin API but not this call ({details}): the server "
            "is an older controlplane than this command; upgrade it")
    where = ("is an xDS port, not the admin API" if _has(lambda: _ads_open(conn))
             else "answers gRPC but is not the controlplane admin API")
    return InvalidInputError([FieldError(
        "--server", f"{conn.server} {where} (default {DEFAULT_SERVER}; serve --admin-addr)")])
