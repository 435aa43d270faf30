"""The xDS serving core: snapshots, the snapshot cache, ADS (SotW + Delta) and SDS, proxies.

It knows protobuf messages, type URLs, versions, nonces and ACKs; nothing of
the model, the store or rollouts (an import-linter contract enforces it).

    snapshot  = Snapshot.build({CLUSTER: [...], ENDPOINT: [...], ...})   # immutable, hashed
    cache     = SnapshotCache(); cache.set_snapshot(group, snapshot); cache.mark_ready()
    registry  = ProxyRegistry()
    AggregatedDiscoveryServer(cache, registry).add_to_server(grpc_aio_server)
    registry.handles()   # who is connected, what each ACKed and NACKed, per type

Streams: `server` (gRPC methods, stream caps) → `sotw` / `delta` (what differs between
the protocols) → `core` (ACK/NACK, push order and holding, one vocabulary) → `stream`
(identity, limits, taking turns, push budget). Nothing here waits for ACKs on a
rollout's behalf: `fleet.py` (outside this package) writes the registry's ACKs and NACKs
to etcd, and the rollout engine compares every replica's with the render `stage.py` made
(`fleet.EtcdFleet.progress`).
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
