"""Listener resources → Envoy Listeners: one HTTP connection manager with RDS over ADS.

Each listener's HCM asks for the RouteConfiguration named after the listener
(`names.route_config_name`), which `route.py` builds. HTTP filters: the local rate
limit filter (disabled at this level; a route's typed_per_filter_config turns it on),
then the router, which must be last.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3.protocol_pb2 import Http2ProtocolOptions, HttpProtocolOptions
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener as ListenerProto
from envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2 import LocalRateLimit
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from controlplane.model import Listener
from controlplane.translate.common import ads, duration, pack, socket_address
from controlplane.translate.names import (
    HCM_FILTER,
    LISTENER_RATELIMIT_STAT_PREFIX,
    LOCAL_RATELIMIT_FILTER,
    ROUTER_FILTER,
    route_config_name,
)
from controlplane.translate.sds import downstream_tls

EDGE_BUFFER_LIMIT_BYTES = 32 * 1024
# Envoy's "Configuring Envoy as an edge proxy" best practices (HTTP part).
EDGE_IDLE_TIMEOUT = "1h"
EDGE_STREAM_IDLE_TIMEOUT = "5m"
EDGE_REQUEST_TIMEOUT = "5m"
EDGE_REQUEST_HEADERS_TIMEOUT = "10s"
EDGE_H2_MAX_CONCURRENT_STREAMS = 100
EDGE_H2_INITIAL_STREAM_WINDOW = 64 * 1024
EDGE_H2_INITIAL_CONNECTION_WINDOW = 1024 * 1024


def build_listeners(listeners: Iterable[Listener], *, edge: bool = False) -> list[ListenerProto]:
    """One Envoy listener per Listener resource.

    Args:
        listeners: the group's Listener resources.
        edge: apply Envoy's edge-proxy hardening (trust no client headers, buffer limits,
            timeouts, HTTP/2 limits) because clients are not under our control.
    """
    return [build_listener(listener, edge=edge) for listener in listeners]


def build_listener(listener: Listener, *, edge: bool = False) -> ListenerProto:
    """The Envoy listener for one Listener resource, on spec.address:spec.port."""
    proto = ListenerProto(
        name=listener.name,
        address=socket_address(listener.spec.address, listener.spec.port),
        filter_chains=[_filter_chain(listener, edge=edge)],
    )
    if edge:
        proto.per_connection_buffer_limit_bytes.value = EDGE_BUFFER_LIMIT_BYTES
    return proto


def _filter_chain(listener: Listener, *, edge: bool) -> FilterChain:
    chain = FilterChain(
        filters=[Filter(name=HCM_FILTER, typed_config=pack(http_connection_manager(
            listener.name, edge=edge
        )))]
    )
    if listener.spec.tls is not None:
        # The group's certificate (and, with mtls, our CA) come over SDS: see sds.py.
        chain.transport_socket.CopyFrom(downstream_tls(listener.spec.group, listener.spec.tls))
    return chain


def http_connection_manager(listener_name: str, *, edge: bool = False) -> HttpConnectionManager:
    """The HCM of a listener: codec AUTO, routes over RDS, rate limit filter then router."""
    hcm = HttpConnectionManager(
        stat_prefix=listener_name,
        codec_type=HttpConnectionManager.AUTO,
        rds=Rds(config_source=ads(), route_config_name=route_config_name(listener_name)),
        http_filters=[
            HttpFilter(
                name=LOCAL_RATELIMIT_FILTER,
                # No token bucket: the filter does nothing unless a route enables it.
                typed_config=pack(LocalRateLimit(stat_prefix=LISTENER_RATELIMIT_STAT_PREFIX)),
            ),
            HttpFilter(name=ROUTER_FILTER, typed_config=pack(Router())),
        ],
    )
    if edge:
        _harden_for_edge(hcm)
    return hcm


def _harden_for_edge(hcm: HttpConnectionManager) -> None:
    # Clients are untrusted: use their address, not their X-Forwarded-For.
    hcm.use_remote_address.CopyFrom(BoolValue(value=True))
    hcm.common_http_protocol_options.CopyFrom(HttpProtocolOptions(
        idle_timeout=duration(EDGE_IDLE_TIMEOUT),
        # Upstreams may treat x_foo and x-foo alike; do not let clients smuggle either.
        headers_with_underscores_action=HttpProtocolOptions.REJECT_REQUEST,
    ))
    hcm.http2_protocol_options.CopyFrom(Http2ProtocolOptions(
        max_concurrent_streams=UInt32Value(value=EDGE_H2_MAX_CONCURRENT_STREAMS),
        initial_stream_window_size=UInt32Value(value=EDGE_H2_INITIAL_STREAM_WINDOW),
        initial_connection_window_size=UInt32Value(value=EDGE_H2_INITIAL_CONNECTION_WINDOW),
    ))
    hcm.stream_idle_timeout.CopyFrom(duration(EDGE_STREAM_IDLE_TIMEOUT))
    hcm.request_timeout.CopyFrom(duration(EDGE_REQUEST_TIMEOUT))
    hcm.request_headers_timeout.CopyFrom(duration(EDGE_REQUEST_HEADERS_TIMEOUT))


def address_problems(listeners: Iterable[Listener]) -> list[str]:
    """Two listeners of one group on the same address:port: Envoy would NACK the second."""
    problems: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    for listener in listeners:
        key = (listener.spec.address, listener.spec.port)
        if key in seen:
            problems.append(
                f"Listener/{listener.name}: {key[0]}:{key[1]} is already used by "
                f"Listener/{seen[key]}"
            )
        seen.setdefault(key, listener.name)
    return problems
