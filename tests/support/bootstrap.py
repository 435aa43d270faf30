"""An Envoy bootstrap for tests: ADS (SotW or Delta) to our xDS server, admin on loopback.

A stand-in until the product's bootstrap generator is used; it carries the
facts DESIGN.md measured (HTTP/2 protocol options on the xDS cluster, node
sent on the first message only, a short reconnect back-off).
"""

from __future__ import annotations

from typing import Any

from tests.support.ports import free_port


def bootstrap(
    *,
    node_id: str,
    group: str,
    xds_port: int,
    admin_port: int | None = None,
    delta: bool = False,
    xds_host: str = "127.0.0.1",
) -> dict[str, Any]:
    """A bootstrap dict: static `xds_cluster` → `xds_host:xds_port`, CDS and LDS over ADS."""
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": group},
        "admin": {
            "address": {
                "socket_address": {
                    "address": "127.0.0.1",
                    "port_value": admin_port if admin_port is not None else free_port(),
                }
            }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": "xds_cluster",
                            "retry_policy": {
                                "retry_back_off": {"base_interval": "0.1s", "max_interval": "0.5s"}
                            },
                        }
                    }
                ],
            },
            "cds_config": ads_source,
            "lds_config": ads_source,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds_cluster",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds_cluster",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }
