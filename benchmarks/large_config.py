"""A large config: translate + serialize time, and what one endpoint change costs on the wire.

    .venv/bin/python -m benchmarks.large_config --clusters 10000 --endpoints 100000 [--json]

In process and pure, the path `Publisher` takes for one proxy group: a DesiredState of
`--clusters / 2` upstreams with two versions each (one EDS cluster per version, so
`--clusters` clusters), `--endpoints` endpoints spread evenly over the clusters, one
route per upstream (its own virtual host) on one listener. Upstreams carry a health
check, outlier detection, circuit breakers, retries and a timeout, like DESIGN.md's
example. translate_ms is `translate()` + `Snapshot.build()` (every resource serialized
once, hashed, wrapped for SotW and Delta, its references collected) + `check()`, wall
clock, the best of `--repeat` runs; translate_cpu_ms the same in this process's CPU
time (on a shared machine the wall clock also counts other processes' turns).

Then one endpoint of one version changes, and the new snapshot is compared with the old
one as the xDS server would send it to a proxy holding the old one: SotW re-sends every
resource of each changed type (a SotW response carries all the subscribed names of its
type; `controlplane/xds/sotw.py`), Delta only the resources whose version changed
(`controlplane/xds/delta.py`). Bytes are the serialized DiscoveryResponse /
DeltaDiscoveryResponse messages. Targets (goals, printed, not asserted): translate +
serialize ≤ 1 s; delta bytes ≤ 1% of SotW bytes.

Last, the server's own work per proxy for that change: `--streams` SotW and as many
Delta streams of the real `controlplane.xds` code (CDS and LDS wildcard, EDS and RDS
by name, as Envoy subscribes) hold the old snapshot; the new one is set in the cache,
and push_us_per_proxy is this process's CPU time until every stream has written its
responses, per stream. The gRPC call under each stream is reduced to a sink that counts
the bytes written (what gRPC costs per write is in convergence.py's raw figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoy.service.discovery.v3 import discovery_pb2

from benchmarks._common import machine, markdown_table
from controlplane.model import DesiredState, Upstream, validate_documents
from controlplane.translate import translate
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.delta import DeltaStream
from controlplane.xds.proxies import ProxyRegistry
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, short_kind
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.sotw import SotwStream
from controlplane.xds.stream import StreamDeps

TARGET_TRANSLATE_MS = 1000.0
TARGET_DELTA_SHARE = 0.01
GROUP = "edge"
_META = {"apiVersion": "controlplane/v1"}


def _endpoint(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:8080"


def _upstream_doc(u: int, first_endpoint: int, per_cluster: Sequence[int]) -> dict[str, Any]:
    versions = {}
    start = first_endpoint
    for v, count in enumerate(per_cluster, start=1):
        versions[f"v{v}"] = {"endpoints": [_endpoint(start + k) for k in range(count)]}
        start += count
    return {
        **_META, "kind": "Upstream", "metadata": {"name": f"svc-{u:05d}"},
        "spec": {
            "active": "v1",
            "versions": versions,
            "healthCheck": {"path": "/healthz", "interval": "5s", "unhealthyThreshold": 3},
            "outlierDetection": {"consecutive5xx": 5, "interval": "10s",
                                 "baseEjectionTime": "30s"},
            "circuitBreakers": {"maxConnections": 1024, "maxPendingRequests": 1024,
                                "maxRequests": 1024},
            "retries": {"attempts": 2, "on": "5xx,reset,connect-failure"},
            "timeout": "5s",
        },
    }


def build_state(clusters: int, endpoints: int) -> DesiredState:
    """`clusters` EDS clusters (two versions per upstream) holding `endpoints` endpoints."""
    if clusters < 2 or endpoints < clusters:
        raise ValueError("need at least 2 clusters and one endpoint per cluster")
    per = [endpoints // clusters + (1 if c < endpoints % clusters else 0)
           for c in range(clusters)]
    docs: list[dict[str, Any]] = [
        {**_META, "kind": "Listener", "metadata": {"name": "edge-http"},
         "spec": {"group": GROUP, "port": 10000}},
    ]
    first = 0
    for u, c in enumerate(range(0, clusters, 2)):
        counts = per[c:c + 2]
        docs.append(_upstream_doc(u, first, counts))
        first += sum(counts)
        docs.append({**_META, "kind": "Route", "metadata": {"name": f"svc-{u:05d}"},
                     "spec": {"listener": "edge-http", "hosts": [f"svc-{u:05d}.example"],
                              "prefix": "/", "upstream": f"svc-{u:05d}"}})
    return DesiredState.of(validate_documents(docs))


def with_one_endpoint_moved(state: DesiredState) -> DesiredState:
    """The state with the first endpoint of the first upstream's v1 changed."""
    upstream = next(iter(state.upstreams.values()))
    doc = upstream.model_dump(by_alias=True, mode="json")
    endpoints = doc["spec"]["versions"]["v1"]["endpoints"]
    endpoints[0] = "192.168.255.254:8080"
    return state.with_applied([Upstream.model_validate(doc)])


def publish(state: DesiredState) -> Snapshot:
    """What Publisher does for one group: translate, build the snapshot, check it."""
    snapshot = Snapshot.build(translate(state, group=GROUP).by_type_url())
    snapshot.check()
    return snapshot


def wire_bytes(old: Snapshot, new: Snapshot) -> tuple[int, int, list[str]]:
    """(SotW bytes, Delta bytes, changed kinds) a proxy holding `old` is sent for `new`."""
    sotw = delta = 0
    changed = []
    for type_url in PUSH_ORDER:
        version = new.version(type_url)
        if version == old.version(type_url):
            continue
        changed.append(short_kind(type_url))
        entries, before = new.resources(type_url), old.resources(type_url)
        full = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url,
                                               nonce="2")
        full.resources.extend(e.packed for e in entries.values())
        sotw += full.ByteSize()
        inc = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version,
                                                   type_url=type_url, nonce="2")
        inc.resources.extend(e.resource for n, e in entries.items()
                             if n not in before or before[n].version != e.version)
        inc.removed_resources.extend(sorted(n for n in before if n not in entries))
        delta += inc.ByteSize()
    return sotw, delta, changed


class _Tally:
    """Writes across every sink; `reached` is set once there are `target` of them."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached = asyncio.Event()

    def add(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()

    async def wait(self, target: int) -> None:
        self.target = target
        if self.count < target:
            self.reached.clear()
            await asyncio.wait_for(self.reached.wait(), 60)


class _Sink:
    """What a stream calls on its gRPC context: writes are counted, and each response is
    answered with an ACK on the stream's request iterator, as Envoy would (not while
    `counting`: parsing a response is the proxy's work, not the server's)."""

    def __init__(self, delta: bool, written: _Tally) -> None:
        self.delta = delta
        self.counting = False
        self.written = written
        self.bytes = 0
        self._requests: asyncio.Queue[Any] = asyncio.Queue()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:0"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # plaintext: no client certificate

    async def abort(self, code: object, details: str) -> None:
        raise RuntimeError(f"stream aborted: {code} {details}")

    async def write(self, data: bytes) -> None:
        self.written.add()
        self.bytes += len(data)
        if self.counting:
            return
        kind = (discovery_pb2.DeltaDiscoveryResponse if self.delta
                else discovery_pb2.DiscoveryResponse)
        response = kind.FromString(data)
        if self.delta:
            self.send(discovery_pb2.DeltaDiscoveryRequest(type_url=response.type_url,
                                                          response_nonce=response.nonce))
        else:
            self._requests.put_nowait(("ack", response))

    def send(self, request: Any) -> None:
        self._requests.put_nowait(request)

    async def requests(self, names: dict[str, list[str]]) -> Any:
        while True:
            item = await self._requests.get()
            if isinstance(item, tuple):  # a SotW ACK repeats the names subscribed
                _, response = item
                item = discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url, version_info=response.version_info,
                    response_nonce=response.nonce, resource_names=names.get(response.type_url, []))
            yield item


async def _push_cost(old: Snapshot, new: Snapshot, *, streams: int, delta: bool) -> float:
    """CPU µs per stream to bring `streams` streams (holding `old`) to `new`, the
    cache's work for the change included."""
    cache, registry = SnapshotCache(), ProxyRegistry()
    cache.mark_ready()
    cache.set_snapshot(GROUP, old)
    deps = StreamDeps(cache, registry)
    names = {ENDPOINT: old.names(ENDPOINT), ROUTE: old.names(ROUTE)}
    sinks, tasks, written = [], [], _Tally()
    for i in range(streams):
        sink = _Sink(delta, written)
        stream = (DeltaStream if delta else SotwStream)(deps, sink)  # type: ignore[arg-type]
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
            if delta:
                request: Any = discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url, resource_names_subscribe=names.get(type_url, []))
            else:
                request = discovery_pb2.DiscoveryRequest(
                    type_url=type_url, resource_names=names.get(type_url, []))
            request.node.id, request.node.cluster = f"proxy-{i}", GROUP
            sink.send(request)
        sinks.append(sink)
        tasks.append(asyncio.create_task(stream.run(sink.requests(names))))

    await written.wait(4 * streams)
    subscribed = {t: old.version(t) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
    def all_acked() -> bool:
        handles = [h for h in registry.handles() if h.group == GROUP]
        return len(handles) >= streams and all(
            h.acked_versions().items() >= subscribed.items() for h in handles)

    if not await registry.wait_until(all_acked, timeout=60):
        raise RuntimeError("the streams did not ACK the first snapshot")
    for sink in sinks:
        sink.counting = True
    c0 = time.process_time()
    cache.set_snapshot(GROUP, new)
    await written.wait(written.count + streams)  # one EDS response each
    cpu = time.process_time() - c0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cpu / streams * 1e6


def measure(clusters: int, endpoints: int, *, repeat: int, streams: int = 100) -> dict[str, Any]:
    """One row of the table."""
    t0 = time.perf_counter()
    state = build_state(clusters, endpoints)
    model_s = time.perf_counter() - t0
    best_translate = best_total = best_cpu = float("inf")
    snapshot = None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        resources = translate(state, group=GROUP)
        t1 = time.perf_counter()
        snapshot = Snapshot.build(resources.by_type_url())
        snapshot.check()
        t2, c2 = time.perf_counter(), time.process_time()
        best_translate = min(best_translate, t1 - t0)
        best_total = min(best_total, t2 - t0)
        best_cpu = min(best_cpu, c2 - c0)
        del resources
    assert snapshot is not None
    served = sum(len(snapshot.resources(t)) for t in PUSH_ORDER)
    config_bytes = sum(e.packed.ByteSize() for t in PUSH_ORDER
                       for e in snapshot.resources(t).values())
    moved = publish(with_one_endpoint_moved(state))
    sotw, delta, changed = wire_bytes(snapshot, moved)
    sotw_push = asyncio.run(_push_cost(snapshot, moved, streams=streams, delta=False))
    delta_push = asyncio.run(_push_cost(snapshot, moved, streams=streams, delta=True))
    translate_ms = best_total * 1e3
    share = delta / sotw if sotw else 0.0
    return {
        "clusters": len(snapshot.resources(PUSH_ORDER[0])),
        "endpoints": endpoints,
        "resources": served,
        "config_bytes": config_bytes,
        "model_ms": round(model_s * 1e3, 1),
        "translate_only_ms": round(best_translate * 1e3, 1),
        "translate_ms": round(translate_ms, 1),
        "translate_cpu_ms": round(best_cpu * 1e3, 1),
        "changed_types": "+".join(changed),
        "sotw_bytes": sotw,
        "delta_bytes": delta,
        "delta_share": round(share, 6),
        "streams": streams,
        "sotw_push_us_per_proxy": round(sotw_push, 1),
        "delta_push_us_per_proxy": round(delta_push, 1),
        "translate_target": "PASS" if translate_ms <= TARGET_TRANSLATE_MS else "FAIL",
        "delta_target": "PASS" if share <= TARGET_DELTA_SHARE else "FAIL",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=10000,
                        help="EDS clusters (two per upstream; default 10000)")
    parser.add_argument("--endpoints", type=int, default=100000,
                        help="endpoints over all clusters (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--streams", type=int, default=100,
                        help="SotW and Delta streams for the push cost (default 100)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if args.clusters < 2 or args.clusters % 2 or args.endpoints < args.clusters:
        parser.error("--clusters: an even number ≥ 2; --endpoints: at least one per cluster")
    row = measure(args.clusters, args.endpoints, repeat=max(1, args.repeat),
                  streams=max(1, args.streams))
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        print(markdown_table([row]))
        print(f"\ntargets: translate + serialize ≤ {TARGET_TRANSLATE_MS:g} ms, "
              f"delta ≤ {TARGET_DELTA_SHARE:.0%} of sotw")
        print(f"machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
