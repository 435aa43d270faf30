"""The Envoy bootstrap that connects one proxy to this control plane over ADS.

Returned as a plain dict (Envoy's proto field names, `@type` for typed configs); the
CLI dumps it to YAML. Everything but the xDS cluster and the admin listener arrives
over ADS (CDS and LDS; EDS, RDS and SDS follow from them).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from controlplane.spiffe import SERVER_ID

XDS_CLUSTER = "xds_cluster"
XDS_CONNECT_TIMEOUT = "1s"
XDS_RETRY_BASE_INTERVAL = "0.1s"
XDS_RETRY_MAX_INTERVAL = "0.5s"
"""Re-join a restarted control plane within ~100 ms, and never wait more than 0.5 s."""

EDGE_MAX_HEAP_BYTES = 2 * 1024**3
"""Heap the overload manager measures against on edge proxies (tune for the host)."""
EDGE_MAX_DOWNSTREAM_CONNECTIONS = 50_000
"""Global limit of client connections on an edge proxy, across all listeners."""

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_METRICS_SERVICE = "envoy.config.metrics.v3.MetricsServiceConfig"
STATS_FLUSH_INTERVAL = "1s"
"""How often Envoy pushes its stats to the control plane's MetricsService (analysis)."""


def bootstrap(
    *,
    node_id: str,
    group: str,
    xds_host: str,
    xds_port: int,
    admin_port: int,
    edge: bool = False,
    delta: bool = False,
    admin_host: str = "127.0.0.1",
    tls_dir: str | None = None,
) -> dict[str, Any]:
    """The bootstrap for proxy `node_id` of proxy group `group`.

    Args:
        node_id: Envoy node.id, unique per proxy.
        group: Envoy node.cluster: the proxy group whose config the proxy receives.
        xds_host: the control plane's xDS address: an IP, or a DNS name (resolved by Envoy).
        xds_port: the control plane's xDS port.
        admin_port: Envoy's admin port; 0 lets the kernel pick one.
        edge: add Envoy's edge-proxy best practices that live in the bootstrap (overload
            manager: heap-based load shedding, a global downstream connection limit).
        delta: use incremental xDS (DELTA_GRPC) instead of state of the world.
        admin_host: the admin listener's address; keep it on loopback.
    """
    config: dict[str, Any] = {
        "node": {"id": node_id, "cluster": group},
        "dynamic_resources": {
            "ads_config": _ads_config(delta=delta),
            "cds_config": _ads_source(),
            "lds_config": _ads_source(),
        },
        "static_resources": {"clusters": [_xds_cluster(xds_host, xds_port, tls_dir)]},
        "admin": {"address": _socket_address(admin_host, admin_port)},
        "stats_sinks": [_metrics_sink()],
        "stats_flush_interval": STATS_FLUSH_INTERVAL,
    }
    if edge:
        config["overload_manager"] = _edge_overload_manager()
    return config


def _ads_source() -> dict[str, Any]:
    return {"ads": {}, "resource_api_version": "V3"}


def _ads_config(*, delta: bool) -> dict[str, Any]:
    return {
        "api_type": "DELTA_GRPC" if delta else "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{
            "envoy_grpc": {
                "cluster_name": XDS_CLUSTER,
                # Back-off for re-opening the ADS stream (default: 0.5 s base, 30 s max).
                "retry_policy": {
                    "retry_back_off": {
                        "base_interval": XDS_RETRY_BASE_INTERVAL,
                        "max_interval": XDS_RETRY_MAX_INTERVAL,
                    }
                },
            }
        }],
        # The node (with its long extension list) is sent once per stream, not per request.
        "set_node_on_first_message_only": True,
    }


def _metrics_sink() -> dict[str, Any]:
    """Stats pushed over the xDS connection's cluster to the control plane's MetricsService:
    counters as deltas per flush and tags as labels (`envoy_cluster_name`), so a replica
    can add them up per cluster (= upstream version) without keeping per-proxy state."""
    return {
        "name": "envoy.stat_sinks.metrics_service",
        "typed_config": {
            "@type": f"type.googleapis.com/{_METRICS_SERVICE}",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": XDS_CLUSTER}},
            "report_counters_as_deltas": True,
            "emit_tags_as_labels": True,
        },
    }


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _xds_cluster(host: str, port: int, tls_dir: str | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        # A DNS name (a compose or Kubernetes service) needs resolving; an IP does not.
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": XDS_CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": _socket_address(host, port)
            }}]}],
        },
        # gRPC needs HTTP/2; without this Envoy speaks HTTP/1.1 and never reaches the server.
        "typed_extension_protocol_options": {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        # Notice a silently dead control plane connection (no FIN) and reconnect: within
        # 30 s + 3 x 5 s, not the kernel's default 2 h (Envoy Gateway's and Contour's values).
        "upstream_connection_options": {"tcp_keepalive": {
            "keepalive_probes": 3, "keepalive_time": 30, "keepalive_interval": 5}},
    }
    if tls_dir is not None:
        cluster["transport_socket"] = _xds_mtls(tls_dir)
    return cluster


def _xds_mtls(tls_dir: str) -> dict[str, Any]:
    """mTLS to the control plane with the files `controlplane cert issue` writes: the
    proxy's identity is its certificate, not the node it claims; the server's is the
    SPIFFE ID only its certificate carries (our CA also signs proxies' and groups'
    certificates: a chain to it alone would let one of those pose as the control plane)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
                     "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{
                    "certificate_chain": {"filename": f"{tls_dir}/proxy.crt"},
                    "private_key": {"filename": f"{tls_dir}/proxy.key"},
                }],
                "validation_context": {
                    "trusted_ca": {"filename": f"{tls_dir}/ca.crt"},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": SERVER_ID}}],
                },
            },
        },
    }


def _edge_overload_manager() -> dict[str, Any]:
    """Envoy's "Configuring Envoy as an edge proxy" overload manager."""
    heap = "envoy.resource_monitors.fixed_heap"
    connections = "envoy.resource_monitors.global_downstream_max_connections"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": EDGE_MAX_HEAP_BYTES,
                },
            },
            {
                "name": connections,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                    "downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": EDGE_MAX_DOWNSTREAM_CONNECTIONS,
                },
            },
        ],
        "actions": [
            {
                "name": "envoy.overload_actions.shrink_heap",
                "triggers": [{"name": heap, "threshold": {"value": 0.95}}],
            },
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": [{"name": heap, "threshold": {"value": 0.98}}],
            },
        ],
    }
