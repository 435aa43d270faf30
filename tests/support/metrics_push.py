"""A MetricsService client that pushes crafted flushes, as a forger (or Envoy) would.

`flush(...)` builds a serialized StreamMetricsMessage like Envoy's metrics_service sink
(tags as labels, counters as deltas; the identifier only on a stream's first message);
`MetricsPush` is a real gRPC client stream to a control plane's xDS port.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # envoy-data-plane on import
    from envoy_data_plane.envoy.config.core.v3 import Node
    from envoy_data_plane.envoy.service.metrics.v3 import (
        StreamMetricsMessage,
        StreamMetricsMessageIdentifier,
    )
    from envoy_data_plane.io.prometheus.client import (
        Counter,
        Gauge,
        LabelPair,
        Metric,
        MetricFamily,
        MetricType,
    )

METHOD = "/envoy.service.metrics.v3.MetricsService/StreamMetrics"


def flush(requests: Mapping[str, tuple[int, int]], *, node_id: str | None = None,
          cluster: str = "", healthy: Mapping[str, tuple[int, int]] | None = None) -> bytes:
    """One flush: per cluster (2xx, 5xx) responses (`cluster.upstream_rq_xx` deltas) and,
    if given, (healthy, total) endpoints; with the identifier when `node_id` is given."""
    metrics = []
    for name, (ok, errors) in requests.items():
        for klass, value in (("2", ok), ("5", errors)):
            metrics.append(Metric(label=[
                LabelPair(name="envoy.cluster_name", value=name),
                LabelPair(name="envoy.response_code_class", value=klass)],
                counter=Counter(value=value)))
    families = [MetricFamily(name="cluster.upstream_rq_xx", type=MetricType.COUNTER,
                             metric=metrics)]
    for family, pick in (("cluster.membership_healthy", 0), ("cluster.membership_total", 1)):
        if healthy:
            families.append(MetricFamily(name=family, type=MetricType.GAUGE, metric=[
                Metric(label=[LabelPair(name="envoy.cluster_name", value=name)],
                       gauge=Gauge(value=values[pick])) for name, values in healthy.items()]))
    message = StreamMetricsMessage(envoy_metrics=families)
    if node_id is not None:
        message.identifier = StreamMetricsMessageIdentifier(
            node=Node(id=node_id, cluster=cluster))
    return bytes(message)


def tls_credentials(creds_dir: Path) -> grpc.ChannelCredentials:
    """A proxy's client certificate as `controlplane cert issue --group G` writes it."""
    return grpc.ssl_channel_credentials(
        root_certificates=(creds_dir / "ca.crt").read_bytes(),
        private_key=(creds_dir / "proxy.key").read_bytes(),
        certificate_chain=(creds_dir / "proxy.crt").read_bytes())


class MetricsPush:
    """`async with MetricsPush(target) as push: await push.send(flush(...))`.

    `result()` ends the stream and gives the status code the server ended it with."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None
                 ) -> None:
        self._channel = (grpc.aio.secure_channel(target, credentials) if credentials
                         else grpc.aio.insecure_channel(target))
        self._call = self._channel.stream_unary(METHOD)()

    async def __aenter__(self) -> MetricsPush:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._call.cancel()
        await self._channel.close()

    async def send(self, raw: bytes) -> None:
        await self._call.write(raw)

    async def result(self) -> tuple[grpc.StatusCode, str]:
        """Half-close and wait for the server's answer: (code, details)."""
        try:
            await self._call.done_writing()
        except grpc.aio.AioRpcError:
            pass  # already ended by the server: its status is below
        try:
            await self._call
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    async def ended(self) -> tuple[grpc.StatusCode, str] | None:
        """The status if the server has ended the stream already, else None."""
        if not self._call.done():
            return None
        return await self.result()


class Forger:
    """A hostile client in a thread: one metrics stream pushing `per_flush` every
    `every_s` seconds until `stop()` (the identifier on the first message, as Envoy does).
    With `ads=True` it first opens an ADS stream as its node on the same connection, so
    it is a connected xDS proxy of the group it claims (which plaintext cannot refuse).

    `ended` is the status the server ended the metrics stream with, if it did."""

    def __init__(self, target: str, *, node_id: str, cluster: str,
                 per_flush: Mapping[str, tuple[int, int]],
                 credentials: grpc.ChannelCredentials | None = None, ads: bool = False,
                 every_s: float = 0.2) -> None:
        self.target, self.node_id, self.cluster = target, node_id, cluster
        self.per_flush, self.credentials, self.ads = per_flush, credentials, ads
        self.every_s = every_s
        self.sent = 0
        self.ended: tuple[grpc.StatusCode, str] | None = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Forger:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "the forger did not stop"

    async def _run(self) -> None:
        channel = (grpc.aio.secure_channel(self.target, self.credentials) if self.credentials
                   else grpc.aio.insecure_channel(self.target))
        async with channel:
            ads = None
            if self.ads:
                ads = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
                    channel).StreamAggregatedResources()
                await ads.write(discovery_pb2.DiscoveryRequest(
                    type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    node=base_pb2.Node(id=self.node_id, cluster=self.cluster)))
                await asyncio.wait_for(ads.read(), 15)
                self.connected.set()
            call = channel.stream_unary(METHOD)()
            first = True
            while not self._stop.is_set() and not call.done():
                raw = flush(self.per_flush, node_id=self.node_id if first else None,
                            cluster=self.cluster)
                first = False
                try:
                    await call.write(raw)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    break  # the server ended the stream: its status below
                self.sent += 1
                await asyncio.sleep(self.every_s)  # a push rate, not a wait for a condition
            if call.done():
                try:
                    await call
                except grpc.aio.AioRpcError as exc:
                    self.ended = exc.code(), exc.details() or ""
            call.cancel()
            if ads is not None:
                ads.cancel()
