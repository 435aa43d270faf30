"""A simulated Envoy fleet: N ADS clients (SotW or Delta) in one or a few OS processes.

Each simulated Envoy has its own node id, group and gRPC channel. Like Envoy it
subscribes to clusters and listeners (wildcard), then to the endpoints of its EDS
clusters and the route configurations its listeners name; it ACKs every response
(or NACKs the types it is told to) and records when each version arrived.

The driver side is `Fleet`: it starts the processes and talks to them over pipes.
Timestamps are `time.monotonic()`, which is one system-wide clock on Linux, so
the driver can compare them with its own.

    fleet = Fleet.start(target, proxies=100, processes=2, delta=False)
    fleet.arm()                 # remember each proxy's current route version
    ... change something ...
    times = fleet.collect(30)   # when each proxy ACKed a different route version
    fleet.close()

A proxy whose stream ends connects again (unless `reconnect=False`) after a jittered back-off
(like Envoy's `retry_back_off`, 0.1 s base, 0.5 s max) and resumes like Envoy: SotW
requests carry its last accepted `version_info` and an empty nonce, Delta requests its
`initial_resource_versions`. `arm()` then `collect_served()` time those re-joins.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

CONNECT_BATCH = 500
"""A fleet process connects its proxies this many at a time, each batch once the one
before has its routes: thousands of TCP connects in the same millisecond overflow the
listen backlog and fail (a reconnect storm is what benchmarks/reconnect.py measures)."""

Response: TypeAlias = Any
"""A DiscoveryResponse or DeltaDiscoveryResponse (the generated modules are untyped)."""


@dataclass(frozen=True)
class Arrival:
    """One response as a simulated Envoy saw it."""

    type_url: str
    version: str
    received: float
    """time.monotonic() when the response was read."""
    answered: float
    """time.monotonic() when the ACK (or NACK) had been written."""
    nacked: bool


@dataclass
class SimEnvoy:
    """One simulated Envoy: a node id, a group, one ADS stream on its own channel."""

    target: str
    node_id: str
    group: str
    delta: bool = False
    nack_types: set[str] = field(default_factory=set)
    """Responses of these types are NACKed (the NACK-on-demand switch)."""
    arrivals: list[Arrival] = field(default_factory=list)
    route_key: str = ""
    """What identifies the route configuration last received ("" before any)."""
    route_answered: float = 0.0
    last_route_bytes: list[bytes] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on every route arrival (and when a stream is served); whoever waits clears it."""
    reconnect: bool = False
    """Connect again (with back-off) when the stream ends, resuming what it had."""
    streams: int = 0
    """Streams opened so far."""
    served_stream: int = 0
    """The last stream that got a response of every type subscribed to."""
    served_at: float = 0.0
    """time.monotonic() when stream `served_stream` had answered its last needed response."""
    _channel: grpc.aio.Channel | None = None
    _call: Any = None
    _names: dict[str, frozenset[str]] = field(default_factory=dict)
    _acked: dict[str, tuple[str, str]] = field(default_factory=dict)
    _sent_node: bool = False
    _have: dict[str, dict[str, str]] = field(default_factory=dict)
    """Delta: the version of each resource held, by type (initial_resource_versions)."""
    _got: set[str] = field(default_factory=set)
    """Types answered on the current stream."""
    _node: bytes = b""
    trace: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    """The last requests, responses and stream errors, for a report of stuck proxies."""

    async def run(self) -> None:
        """Connect and answer responses until cancelled, or the stream ends (no `reconnect`)."""
        attempt = 0
        while True:
            if await self._stream():
                attempt = 0
            if not self.reconnect:
                return
            # Envoy's jittered exponential back-off: uniform in [0, min(base * 2^n, max)).
            await asyncio.sleep(random.uniform(0.0, min(0.1 * 2 ** attempt, 0.5)))
            attempt += 1

    async def _stream(self) -> bool:
        """One ADS stream until it ends; whether it got any response."""
        # A local subchannel pool: its own TCP connection, like a real Envoy (channels with
        # equal arguments otherwise share one connection per process).
        self._channel = grpc.aio.insecure_channel(
            self.target, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._call = (stub.DeltaAggregatedResources() if self.delta
                      else stub.StreamAggregatedResources())
        self.streams += 1
        self._sent_node, self._got = False, set()
        try:
            if self._names:
                await self._resume()
            for type_url in (CLUSTER, LISTENER):  # a first stream may end before both
                if type_url not in self._names:
                    await self._subscribe(type_url, ())
            async for response in self._call:
                await self._on_response(response)
        except grpc.RpcError as exc:
            # The server went away: the driver sees the proxy stop converging.
            self.trace.append(f"{time.monotonic():.3f} error {exc.code()} {exc.details()}")
        except (Exception, asyncio.CancelledError) as exc:
            # Any broken stream: reconnect, as Envoy does. grpc.aio raises more than
            # RpcError for a call that ends under it (seen in reconnect storms:
            # InvalidStateError "RPC already finished" from a write racing the call's end;
            # a CancelledError out of a call cancelled under it is taken the same way).
            # Unhandled, they ended the proxy's task: it was never served again.
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # this proxy is being stopped
            self.trace.append(f"{time.monotonic():.3f} error {type(exc).__name__}: {exc}")
        finally:
            await self._channel.close()
        return bool(self._got)

    async def _resume(self) -> None:
        """Re-send every subscription on a new stream, as Envoy does after a reconnect."""
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
            if type_url not in self._names:
                continue
            names = self._names[type_url]
            if self.delta:
                req = discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url, resource_names_subscribe=sorted(names),
                    initial_resource_versions=self._have.get(type_url, {}))
                if not self._sent_node:
                    req.node.MergeFromString(self._node_bytes())
                    self._sent_node = True
                await self._call.write(req)
            else:
                await self._request(type_url, names=sorted(names), nonce="")

    async def _request(self, type_url: str, *, names: Sequence[str] | None = None,
                       nonce: str = "", error: str | None = None) -> None:
        req: Any
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
            if names is not None:
                old = self._names.get(type_url, frozenset())
                req.resource_names_subscribe.extend(sorted(set(names) - old))
                req.resource_names_unsubscribe.extend(sorted(old - set(names)))
        else:
            version = self._acked.get(type_url, ("", ""))[0]  # the last accepted
            req = discovery_pb2.DiscoveryRequest(
                type_url=type_url, version_info=version, response_nonce=nonce,
                resource_names=sorted(names if names is not None
                                      else self._names.get(type_url, frozenset())))
        if names is not None:
            self._names[type_url] = frozenset(names)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        if not self._sent_node:
            req.node.MergeFromString(self._node_bytes())
            self._sent_node = True
        self.trace.append(f"{time.monotonic():.3f} send {type_url.rsplit('.', 1)[-1]} "
                          f"nonce={nonce!r} error={error is not None}")
        await self._call.write(req)

    def _node_bytes(self) -> bytes:
        # Built once: 500 extensions are ~46 KB, and a reconnect storm re-sends them all.
        if not self._node:
            self._node = _node(self.node_id, self.group).SerializeToString()
        return self._node

    async def _subscribe(self, type_url: str, names: Sequence[str]) -> None:
        if self.delta and type_url in (CLUSTER, LISTENER):
            await self._request(type_url, names=["*"])
        else:
            last_nonce = "" if self.delta else self._acked.get(type_url, ("", ""))[1]
            await self._request(type_url, names=names, nonce=last_nonce)

    async def _on_response(self, response: Response) -> None:
        received = time.monotonic()
        type_url = response.type_url
        self.trace.append(f"{received:.3f} got {type_url.rsplit('.', 1)[-1]} "
                          f"nonce={response.nonce}")
        if self.delta:
            version = response.system_version_info
            key = "|".join([*(f"{r.name}={r.version}" for r in response.resources),
                            *(f"-{n}" for n in response.removed_resources)])
        else:
            version = key = response.version_info
        nack = type_url in self.nack_types
        if nack:
            await self._request(type_url, nonce=response.nonce, error="simulated NACK")
        else:
            self._acked[type_url] = (version, response.nonce)
            if self.delta:
                have = self._have.setdefault(type_url, {})
                have.update((r.name, r.version) for r in response.resources)
                for name in response.removed_resources:
                    have.pop(name, None)
            await self._request(type_url, nonce=response.nonce)
        answered = time.monotonic()
        self.arrivals.append(Arrival(type_url, version, received, answered, nack))
        self._got.add(type_url)
        if self.served_stream != self.streams and self._served():
            self.served_stream, self.served_at = self.streams, answered
            self.changed.set()
        if type_url == ROUTE and not nack:
            self.route_key, self.route_answered = key, answered
            self.last_route_bytes = [*self.last_route_bytes[-1:], response.SerializeToString()]
            self.changed.set()
        if nack:
            return
        if type_url == CLUSTER:
            await self._follow(ENDPOINT, _eds_names(response, delta=self.delta))
        elif type_url == LISTENER:
            await self._follow(ROUTE, _rds_names(response, delta=self.delta))

    def channel_state(self) -> str:
        """The connectivity of the current stream's channel (READY: connected)."""
        return "-" if self._channel is None else self._channel.get_state().name

    def _served(self) -> bool:
        """Whether the current stream answered every type this proxy subscribes to."""
        wanted = {CLUSTER, LISTENER} | {t for t in (ENDPOINT, ROUTE) if self._names.get(t)}
        return wanted <= self._got and bool(self._names.get(ROUTE))

    async def _follow(self, type_url: str, names: frozenset[str]) -> None:
        if names and names != self._names.get(type_url):
            await self._subscribe(type_url, sorted(names))


# What a real Envoy 1.40 puts in its node: its build and ~500 registered extensions
# (what the control plane keeps of them is part of its memory per proxy).
_CATEGORIES = ("envoy.filters.http", "envoy.filters.network", "envoy.filters.listener",
               "envoy.transport_sockets.upstream", "envoy.access_loggers", "envoy.tracers",
               "envoy.clusters", "envoy.matching.inputs", "envoy.resolvers", "envoy.stats_sinks")
_EXTENSIONS = [base_pb2.Extension(name=f"{c}.extension_{i:03d}", category=c,
                                  type_descriptor=f"{c}.v3.Config{i}")
               for i in range(50) for c in _CATEGORIES]


def _node(node_id: str, group: str) -> Any:
    node = base_pb2.Node(id=node_id, cluster=group, user_agent_name="envoy",
                         extensions=_EXTENSIONS)
    node.user_agent_build_version.version.major_number = 1
    node.user_agent_build_version.version.minor_number = 40
    return node


def _unpacked(response: Response, message: Any, *, delta: bool) -> list[Any]:
    out = []
    for item in response.resources:
        any_ = item.resource if delta else item
        msg = message()
        if any_.Unpack(msg):
            out.append(msg)
    return out


def _eds_names(response: Response, *, delta: bool) -> frozenset[str]:
    return frozenset(
        c.eds_cluster_config.service_name or c.name
        for c in _unpacked(response, cluster_pb2.Cluster, delta=delta)
        if c.type == cluster_pb2.Cluster.EDS
    )


def _rds_names(response: Response, *, delta: bool) -> frozenset[str]:
    names = set()
    for listener in _unpacked(response, listener_pb2.Listener, delta=delta):
        for chain in listener.filter_chains:
            for f in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                    names.add(hcm.rds.route_config_name)
    return frozenset(names)


# ---- one fleet process -------------------------------------------------------------------

async def _serve_pipe(conn: multiprocessing.connection.Connection) -> None:
    envoys: list[SimEnvoy] = []
    tasks: list[asyncio.Task[None]] = []
    armed: list[str] = []
    armed_streams: list[int] = []
    try:
        while True:
            cmd, *args = await asyncio.to_thread(conn.recv)
            if cmd == "connect":
                target, node_ids, group, delta, timeout, reconnect = args
                deadline = time.monotonic() + timeout
                for start in range(0, len(node_ids), CONNECT_BATCH):
                    batch = [SimEnvoy(target, node_id, group, delta=delta, reconnect=reconnect)
                             for node_id in node_ids[start:start + CONNECT_BATCH]]
                    envoys += batch
                    tasks += [asyncio.create_task(envoy.run()) for envoy in batch]
                    await _wait(batch, [""] * len(batch), max(0.0, deadline - time.monotonic()))
                ready = await _wait(envoys, [""] * len(envoys),
                                    max(0.0, deadline - time.monotonic()))
                stuck = [list(e.trace) for e, t in zip(envoys, ready, strict=True)
                         if t is None][:1]
                conn.send(("ready", sum(1 for t in ready if t is not None), _states(envoys),
                           stuck))
            elif cmd == "arm":
                armed = [e.route_key for e in envoys]
                armed_streams = [e.served_stream for e in envoys]
                for e in envoys:
                    e.changed.clear()
                conn.send(("armed",))
            elif cmd == "collect":
                conn.send(("times", await _wait(envoys, armed, args[0])))
            elif cmd == "collect_served":
                times = await _wait_served(envoys, armed_streams, args[0])
                stuck = [f"{e.node_id} {_states([e])} channel={e.channel_state()}: "
                         f"{list(e.trace)}"
                         for e, t in zip(envoys, times, strict=True) if t is None][:1]
                conn.send(("times", times, stuck))
            elif cmd == "nack":
                type_url, on = args
                for e in envoys:
                    (e.nack_types.add if on else e.nack_types.discard)(type_url)
                conn.send(("ok",))
            elif cmd == "route_bytes":
                conn.send(("bytes", envoys[0].last_route_bytes if envoys else []))
            elif cmd == "arrivals":
                conn.send(("arrivals", {e.node_id: e.arrivals for e in envoys}))
            elif cmd == "close":
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(("closed",))


def _states(envoys: Sequence[SimEnvoy]) -> dict[str, int]:
    """How many proxies are in each state: streams opened, types answered on the last."""
    return dict(collections.Counter(
        f"streams={e.streams} got={'+'.join(sorted(t.rsplit('.', 1)[-1] for t in e._got)) or '-'}"
        for e in envoys))


async def _wait(envoys: Sequence[SimEnvoy], armed: Sequence[str],
                timeout: float) -> list[float | None]:
    """Each proxy's ACK time of a route version other than `armed`; None if none in time."""
    async def one(envoy: SimEnvoy, before: str) -> float | None:
        while envoy.route_key == before:
            envoy.changed.clear()
            await envoy.changed.wait()
        return envoy.route_answered

    results: list[float | None] = [None] * len(envoys)

    async def fill(i: int) -> None:
        results[i] = await one(envoys[i], armed[i])

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(fill(i) for i in range(len(envoys))))
    return results


async def _wait_served(envoys: Sequence[SimEnvoy], armed: Sequence[int],
                       timeout: float) -> list[float | None]:
    """Each proxy's time a stream newer than `armed` was served; None if none in time."""
    results: list[float | None] = [None] * len(envoys)

    async def fill(i: int) -> None:
        envoy = envoys[i]
        while envoy.served_stream <= armed[i]:
            envoy.changed.clear()
            await envoy.changed.wait()
        results[i] = envoy.served_at

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(fill(i) for i in range(len(envoys))))
    return results


def _process_main(conn: multiprocessing.connection.Connection) -> None:
    asyncio.run(_serve_pipe(conn))


# ---- the driver's handle -----------------------------------------------------------------

class Fleet:
    """N simulated Envoys spread over `processes` OS processes."""

    def __init__(self, procs: list[tuple[multiprocessing.process.BaseProcess,
                                         multiprocessing.connection.Connection]]) -> None:
        self._procs = procs
        self.stuck: list[str] = []
        """After `collect_served`: one proxy per process that was not served, with its
        state and last requests and responses."""

    @classmethod
    def start(cls, target: str, *, proxies: int, processes: int = 2, delta: bool = False,
              group: str = "edge", prefix: str = "sim", timeout: float = 60.0,
              reconnect: bool = True) -> Fleet:
        """Start the processes and connect every proxy; returns once all have a route.

        A proxy whose stream ends connects again and resumes (see above), as Envoy does:
        when thousands connect at once, some first attempts fail. `reconnect=False`:
        it stays gone.

        Errors:
            RuntimeError: not every proxy received a route configuration within `timeout`.
        """
        ctx = multiprocessing.get_context("spawn")
        fleet = cls([])
        processes = max(1, min(processes, proxies))
        try:
            for p in range(processes):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_process_main, args=(child,), daemon=True,
                                   name=f"fleet-{p}")
                proc.start()
                fleet._procs.append((proc, parent))
            for p, (_, conn) in enumerate(fleet._procs):
                ids = [f"{prefix}-{i}" for i in range(p, proxies, processes)]
                conn.send(("connect", target, ids, group, delta, timeout, reconnect))
            replies = fleet._reply("ready", timeout + 10)
            ready = sum(r[1] for r in replies)
            if ready != proxies:
                states: collections.Counter[str] = collections.Counter()
                for reply in replies:
                    states.update(reply[2])
                stuck = next(trace for r in replies for trace in r[3])
                raise RuntimeError(f"only {ready} of {proxies} proxies got a route config; "
                                   f"proxies by state: {dict(states)}; what one of the "
                                   f"others last did: {stuck}")
        except BaseException:
            fleet.close()
            raise
        return fleet

    def _reply(self, kind: str, timeout: float) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        out = []
        for proc, conn in self._procs:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{proc.name} did not answer {kind!r} in {timeout:.0f}s")
            msg = conn.recv()
            if msg[0] != kind:
                raise RuntimeError(f"{proc.name}: expected {kind!r}, got {msg[0]!r}")
            out.append(msg)
        return out

    def _all(self, *cmd: Any, reply: str, timeout: float = 30.0) -> list[tuple[Any, ...]]:
        for _, conn in self._procs:
            conn.send(cmd)
        return self._reply(reply, timeout)

    def arm(self) -> None:
        """Remember every proxy's current route version; `collect` waits for a different one."""
        self._all("arm", reply="armed")

    def collect(self, timeout: float) -> list[float | None]:
        """Per proxy, time.monotonic() of its ACK of a new route version (None: none in time)."""
        times: list[float | None] = []
        for msg in self._all("collect", timeout, reply="times", timeout=timeout + 10):
            times.extend(msg[1])
        return times

    def collect_served(self, timeout: float) -> list[float | None]:
        """Per proxy, time.monotonic() when a stream opened after `arm` got every type it
        subscribes to (None: none in time). Needs `reconnect=True`."""
        times: list[float | None] = []
        self.stuck = []
        for msg in self._all("collect_served", timeout, reply="times", timeout=timeout + 10):
            times.extend(msg[1])
            self.stuck += msg[2]
        return times

    def nack(self, type_url: str, on: bool = True) -> None:
        """Make every proxy NACK (on) or ACK again (off) responses of `type_url`."""
        self._all("nack", type_url, on, reply="ok")

    def route_bytes(self) -> list[bytes]:
        """The serialized last (up to two) route responses the first proxy received."""
        return list(self._all("route_bytes", reply="bytes")[0][1])

    def arrivals(self) -> dict[str, list[Arrival]]:
        """Every response each proxy received, by node id."""
        out: dict[str, list[Arrival]] = {}
        for msg in self._all("arrivals", reply="arrivals", timeout=60):
            out.update(msg[1])
        return out

    def close(self) -> None:
        """Stop every process (politely, then by force)."""
        for _, conn in self._procs:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("close",))
        for proc, conn in self._procs:
            with contextlib.suppress(OSError, EOFError, ValueError):
                if conn.poll(10):
                    conn.recv()
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self._procs = []
