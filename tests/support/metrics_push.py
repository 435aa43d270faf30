"""A MetricsService client that pushes crafted flushes, as a forger (or Envoy) would.

`flush(...)` builds a serialized StreamMetricsMessage like Envoy's metrics_service sink
(tags as labels, counters as deltas; the identifier only on a stream's first message);
`MetricsPush` is a real gRPC client stream to a control plane's xDS port.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import grpc

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
