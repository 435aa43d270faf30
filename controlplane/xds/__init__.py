"""The xDS serving core: snapshots, the snapshot cache, ADS (SotW + Delta) and SDS, proxies.

It knows protobuf messages, type URLs, versions, nonces and ACKs; nothing of
the model, the store or rollouts (an import-linter contract enforces it).

    snapshot  = Snapshot.build({CLUSTER: [...], ENDPOINT: [...], ...})   # immutable, hashed
    cache     = SnapshotCache(); cache.set_snapshot(group, snapshot); cache.mark_ready()
    registry  = ProxyRegistry()
    AggregatedDiscoveryServer(cache, registry).add_to_server(grpc_aio_server)
    await registry.wait_acked(group, {ROUTE: snapshot.version(ROUTE)}, timeout=30)
"""

from controlplane.xds.cache import SnapshotCache, SnapshotSource
from controlplane.xds.observer import NO_OBSERVER, XdsObserver
from controlplane.xds.proxies import ProxyRegistry, ProxyStatus, TypeStatus
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET
from controlplane.xds.server import AggregatedDiscoveryServer
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.stream import GroupOf, node_cluster

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "NO_OBSERVER",
    "PUSH_ORDER",
    "ROUTE",
    "SECRET",
    "AggregatedDiscoveryServer",
    "GroupOf",
    "ProxyRegistry",
    "ProxyStatus",
    "Snapshot",
    "SnapshotCache",
    "SnapshotSource",
    "TypeStatus",
    "XdsObserver",
    "node_cluster",
]
