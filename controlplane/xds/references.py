"""What a resource refers to by name: the input of a snapshot's consistency check.

A generic walk over every set field of a message (unpacking `google.protobuf.Any`
when its type is known to the default descriptor pool) finds references wherever
they sit: an RDS name in any HCM of any filter chain, a cluster in a weighted
route or a mirror policy, an SDS secret in a TLS context or a credential
injector. Only names served over ADS count: a secret from a file source or a
static bootstrap cluster is not the snapshot's business.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from controlplane.xds.resources import CLUSTER, ENDPOINT, ROUTE, SECRET

_ANY = "google.protobuf.Any"
_RDS = "envoy.extensions.filters.network.http_connection_manager.v3.Rds"
_SDS = "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig"
_ROUTE_ACTION = "envoy.config.route.v3.RouteAction"
_MIRROR = "envoy.config.route.v3.RouteAction.RequestMirrorPolicy"
_ROUTE_WEIGHT = "envoy.config.route.v3.WeightedCluster.ClusterWeight"
_TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_TCP_WEIGHT = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight"
_CLUSTER_MSG = "envoy.config.cluster.v3.Cluster"

_MAX_DEPTH = 64
"""Proto nesting is shallow in practice; the bound only stops a pathological input."""


@dataclass(frozen=True)
class Reference:
    """`source` (a type URL and name) needs `name` of type `target` in the snapshot."""

    source_type: str
    source_name: str
    target: str
    name: str

    def __str__(self) -> str:
        kind = self.source_type.rsplit(".", 1)[-1]
        target = self.target.rsplit(".", 1)[-1]
        return f"{kind} {self.source_name!r} references {target} {self.name!r}"


@dataclass
class _Collector:
    source_type: str
    source_name: str
    found: list[Reference] = field(default_factory=list)

    def add(self, target: str, name: str) -> None:
        if name:
            self.found.append(Reference(self.source_type, self.source_name, target, name))


def references_of(type_url: str, name: str, message: Message) -> tuple[Reference, ...]:
    """Every ADS-served name `message` (a resource of `type_url`) depends on, in walk order."""
    collector = _Collector(type_url, name)
    full_name = message.DESCRIPTOR.full_name
    if full_name == _CLUSTER_MSG and message.WhichOneof("cluster_discovery_type") == "type":
        if message.type == message.EDS:
            collector.add(ENDPOINT, message.eds_cluster_config.service_name or message.name)
    _walk(message, collector, 0)
    return tuple(collector.found)


def _walk(message: Message, out: _Collector, depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    descriptor: Descriptor = message.DESCRIPTOR
    full_name = descriptor.full_name
    if full_name == _ANY:
        inner = _unpack(message)
        if inner is not None:
            _walk(inner, out, depth + 1)
        return
    _note(full_name, message, out)
    for fd, value in message.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        for child in _children(fd, value):
            _walk(child, out, depth + 1)


def _children(fd: FieldDescriptor, value: Any) -> Iterator[Message]:
    if fd.message_type.GetOptions().map_entry:
        value_fd = fd.message_type.fields_by_name["value"]
        if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
            yield from value.values()
        return
    if fd.is_repeated:
        yield from value
    else:
        yield value


def _note(full_name: str, message: Message, out: _Collector) -> None:
    if full_name == _RDS:
        out.add(ROUTE, message.route_config_name)
    elif full_name == _SDS:
        if message.HasField("sds_config") and message.sds_config.HasField("ads"):
            out.add(SECRET, message.name)
    elif full_name in (_ROUTE_ACTION, _TCP_PROXY, _MIRROR):
        out.add(CLUSTER, message.cluster)
    elif full_name in (_ROUTE_WEIGHT, _TCP_WEIGHT):
        out.add(CLUSTER, message.name)


def _unpack(packed: Message) -> Message | None:
    """The message inside an Any, or None when its type is not linked into this process."""
    full_name = packed.type_url.rsplit("/", 1)[-1]
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        return None
    inner: Message = message_factory.GetMessageClass(descriptor)()
    try:
        inner.ParseFromString(packed.value)
    except DecodeError:
        return None
    return inner
