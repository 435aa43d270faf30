"""Hand-built Envoy protos for tests: an EDS cluster, its endpoints, an RDS listener, routes.

Everything is served over ADS (`ConfigSource{ads: {}}`), as the product does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _any(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def eds_cluster(name: str, *, service_name: str = "") -> cluster_pb2.Cluster:
    """An EDS cluster (endpoints over ADS) with a short connect timeout."""
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=_ads(), service_name=service_name
        ),
        connect_timeout=duration_pb2.Duration(nanos=500_000_000),
    )


def endpoints(
    cluster_name: str, addresses: Iterable[tuple[str, int]]
) -> endpoint_pb2.ClusterLoadAssignment:
    """A ClusterLoadAssignment with one locality holding `addresses`."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=_socket_address(host, port)
                        )
                    )
                    for host, port in addresses
                ]
            )
        ],
    )


def _socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def http_listener(
    name: str, port: int, route_config_name: str, *, host: str = "127.0.0.1"
) -> listener_pb2.Listener:
    """A plain-HTTP listener whose HCM takes its routes from RDS over ADS."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=route_config_name),
        http_filters=[
            hcm_pb2.HttpFilter(name="envoy.filters.http.router",
                               typed_config=_any(router_pb2.Router()))
        ],
    )
    return listener_pb2.Listener(
        name=name,
        address=_socket_address(host, port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=_any(hcm),
                    )
                ]
            )
        ],
    )


def route_config(
    name: str, cluster: str | Mapping[str, int], *, prefix: str = "/"
) -> route_pb2.RouteConfiguration:
    """One virtual host for every domain routing `prefix` to a cluster or weighted clusters."""
    if isinstance(cluster, str):
        action = route_components_pb2.RouteAction(cluster=cluster)
    else:
        action = route_components_pb2.RouteAction(
            weighted_clusters=route_components_pb2.WeightedCluster(
                clusters=[
                    route_components_pb2.WeightedCluster.ClusterWeight(name=c, weight={"value": w})
                    for c, w in sorted(cluster.items())
                ]
            )
        )
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=name,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix=prefix), route=action
                    )
                ],
            )
        ],
    )


def generic_secret(name: str, value: bytes) -> secret_pb2.Secret:
    """An SDS generic secret (as a credential injector would use)."""
    return secret_pb2.Secret(
        name=name,
        generic_secret=secret_pb2.GenericSecret(secret=base_pb2.DataSource(inline_bytes=value)),
    )


def resources(
    *,
    clusters: Sequence[Message] = (),
    endpoints: Sequence[Message] = (),
    listeners: Sequence[Message] = (),
    routes: Sequence[Message] = (),
    secrets: Sequence[Message] = (),
) -> dict[str, Sequence[Message]]:
    """The {type URL: messages} mapping `Snapshot.build` takes."""
    return {CLUSTER: clusters, ENDPOINT: endpoints, LISTENER: listeners, ROUTE: routes,
            SECRET: secrets}


def simple_app(
    *,
    cluster: str,
    upstream: tuple[str, int],
    listener: str,
    listener_port: int,
    route: str,
) -> dict[str, Sequence[Message]]:
    """One EDS cluster to `upstream`, one RDS listener on `listener_port`, one route to it."""
    return resources(
        clusters=[eds_cluster(cluster)],
        endpoints=[endpoints(cluster, [upstream])],
        listeners=[http_listener(listener, listener_port, route)],
        routes=[route_config(route, cluster)],
    )
