"""A gRPC server posing as the control plane with a certificate that is not its own.

It serves TLS with whatever certificate a test gives it (a proxy's, from `cert issue`),
records every call that reaches it (method and metadata: a leaked bearer token would
show), and answers an ADS stream with a cluster named `impostor` for each CDS request,
so an Envoy that accepted it would show that cluster. Stopped in teardown.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.any_pb2 import Any as AnyProto

from tests.support.ports import free_port

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
IMPOSTOR_CLUSTER = "impostor"


@dataclass(frozen=True)
class Call:
    method: str
    metadata: tuple[tuple[str, str | bytes], ...]


@dataclass
class Impostor:
    """Start with `start(cert, key)`; `calls` lists what reached it."""

    port: int = field(default_factory=free_port)
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: grpc.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, cert: Path, key: Path) -> Impostor:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers([_Handler(self)])
        creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        if server.add_secure_port(self.target, creds) == 0:
            raise OSError(f"impostor: cannot bind {self.target}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)

    def record(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append(Call(method, tuple(context.invocation_metadata())))


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, impostor: Impostor) -> None:
        self._impostor = impostor

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(details.method)  # type: ignore[attr-defined]
        if method == ADS_METHOD:
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: self._ads(method, requests, context),
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString)
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._refuse(method, context))

    def _ads(self, method: str, requests: Iterator[discovery_pb2.DiscoveryRequest],
             context: grpc.ServicerContext) -> Iterator[discovery_pb2.DiscoveryResponse]:
        self._impostor.record(method, context)
        for n, request in enumerate(requests):
            resources: list[AnyProto] = []
            if request.type_url == CDS and not request.response_nonce:
                packed = AnyProto()
                packed.Pack(Cluster(name=IMPOSTOR_CLUSTER, type=Cluster.STATIC))
                resources.append(packed)
            elif request.response_nonce:
                continue  # an ACK or NACK: nothing more to say
            yield discovery_pb2.DiscoveryResponse(
                version_info="impostor-1", type_url=request.type_url,
                resources=resources, nonce=str(n))

    def _refuse(self, method: str, context: grpc.ServicerContext) -> Any:
        self._impostor.record(method, context)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "impostor")
