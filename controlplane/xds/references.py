"""What a resource refers to by name: the input of a snapshot's consistency check.

A generic walk over every set field of a message (unpacking `google.protobuf.Any`
when its type is known to the default descriptor pool) finds references wherever
they sit: an RDS name in any HCM of any filter chain, a cluster in a weighted
route or a mirror policy, an SDS secret in a TLS context or a credential
injector. Only names served over ADS count: a secret from a file source or a
static bootstrap cluster is not the snapshot's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
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

_NOTED = frozenset({_RDS, _SDS, _ROUTE_ACTION, _MIRROR, _ROUTE_WEIGHT, _TCP_PROXY, _TCP_WEIGHT})
_OPAQUE = frozenset({"envoy.config.core.v3.Metadata", "google.protobuf.Struct"})
"""Never hold a name served over ADS (a filter's metadata is its own business)."""
_MAY_REFER: dict[str, bool] = {}


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
    full_name = message.DESCRIPTOR.full_name
    if full_name == _ANY:
        inner = _unpack(message)
        if inner is not None:
            _walk(inner, out, depth + 1)
        return
    if full_name in _NOTED:
        _note(full_name, message, out)
    for fd, value in message.ListFields():
        kind = fd.message_type
        if kind is None:
            continue
        refer = _MAY_REFER.get(kind.full_name)
        if not (refer if refer is not None else _may_refer(kind)):
            continue
        if fd.is_repeated:
            if kind.GetOptions().map_entry:
                value_fd = kind.fields_by_name["value"]
                if value_fd.message_type is None:
                    continue
                value = value.values()
            for child in value:
                _walk(child, out, depth + 1)
        else:
            _walk(value, out, depth + 1)


def _may_refer(descriptor: Descriptor) -> bool:
    """Whether a message of this type can hold a reference at any depth (through an Any,
    anything can): the walk skips the rest, e.g. every endpoint of an EDS resource."""
    known = _MAY_REFER.get(descriptor.full_name)
    if known is not None:
        return known
    seen: set[str] = set()
    stack = [descriptor]
    found = False
    while stack and not found:
        current = stack.pop()
        name = current.full_name
        if name in seen or name in _OPAQUE:
            continue
        seen.add(name)
        found = name in _NOTED or name == _ANY
        stack.extend(f.message_type for f in current.fields if f.message_type is not None)
    _MAY_REFER[descriptor.full_name] = found
    return found


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
