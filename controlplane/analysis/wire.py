"""Just enough of the protobuf wire format to read the metric families analysis needs out
of a serialized `envoy.service.metrics.v3.StreamMetricsMessage`.

xds-protos lacks the message, and envoy-data-plane (betterproto2) takes ~50 ms to parse
one ~50 KB flush: 1,000 proxies flushing every 10 s would need five cores. This walks the
message, skips every family not asked for by length, and decodes the few fields of the
rest that analysis reads (io.prometheus.client: MetricFamily, Metric, LabelPair, Counter,
Gauge, Histogram, Bucket). Tests build messages with envoy-data-plane and read them here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

_IDENTIFIER, _FAMILIES = 1, 2  # StreamMetricsMessage.identifier, .envoy_metrics
_NODE = 1  # StreamMetricsMessage.Identifier.node
_NODE_ID, _NODE_CLUSTER = 1, 2  # envoy.config.core.v3.Node.id, .cluster
# MetricFamily
_NAME, _METRIC = 1, 4
# Metric
_LABEL, _GAUGE, _COUNTER, _HISTOGRAM = 1, 2, 3, 7
# Histogram
_SAMPLE_COUNT, _BUCKET = 1, 3
# Bucket
_CUMULATIVE, _UPPER_BOUND = 1, 2
_DOUBLE = struct.Struct("<d")


@dataclass
class Sample:
    """One series of a family: its labels and whichever value it carries."""

    labels: dict[str, str] = field(default_factory=dict)
    counter: float | None = None
    gauge: float | None = None
    sample_count: int = 0
    buckets: list[tuple[float, int]] = field(default_factory=list)
    """Histogram: (upper bound, cumulative count)."""


@dataclass
class Family:
    name: str
    samples: list[Sample]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip(buf: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(buf, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        length, pos = _varint(buf, pos)
        return pos + length
    if wire == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire}")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field in buf[pos:end]; for
    length-delimited fields start/end bound the payload, else the value."""
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _varint(buf, pos)
            start, pos = pos, pos + length
        else:
            start, pos = pos, _skip(buf, pos, wire)
        if pos > end:
            raise ValueError("truncated message")
        yield number, wire, start, pos


@dataclass(frozen=True)
class Identifier:
    """The node a StreamMetricsMessage's `identifier.node` claims, as raw bytes (a
    claim: the caller bounds and decodes it)."""

    node_id: bytes
    cluster: bytes


def identifier(raw: bytes) -> Identifier | None:
    """The node id and cluster of one serialized StreamMetricsMessage's identifier, or
    None without one (Envoy sends it on a stream's first message only). Reads nothing
    else of the node (its ~500 extension names) and stops at the identifier.

    Errors:
        ValueError, IndexError: the bytes are not such a message.
    """
    for number, wire, start, end in _fields(raw, 0, len(raw)):
        if number != _IDENTIFIER or wire != 2:
            continue
        node_id = cluster = b""
        for n, w, s, e in _fields(raw, start, end):
            if n != _NODE or w != 2:
                continue
            for field_number, field_wire, fs, fe in _fields(raw, s, e):
                if field_wire != 2:
                    continue
                if field_number == _NODE_ID:
                    node_id = raw[fs:fe]
                elif field_number == _NODE_CLUSTER:
                    cluster = raw[fs:fe]
        return Identifier(node_id, cluster)
    return None


def families(raw: bytes, wanted: frozenset[str]) -> Iterator[Family]:
    """The metric families named in `wanted` of one serialized StreamMetricsMessage.

    Errors:
        ValueError, IndexError: the bytes are not such a message.
    """
    for number, wire, start, end in _fields(raw, 0, len(raw)):
        if number != _FAMILIES or wire != 2:
            continue
        name = _name_of(raw, start, end)
        if name is not None and name in wanted:
            yield Family(name, [_sample(raw, s, e) for n, w, s, e in _fields(raw, start, end)
                                if n == _METRIC and w == 2])


def _name_of(buf: bytes, start: int, end: int) -> str | None:
    for number, wire, s, e in _fields(buf, start, end):
        if number == _NAME and wire == 2:
            return buf[s:e].decode()
    return None


def _sample(buf: bytes, start: int, end: int) -> Sample:
    sample = Sample()
    for number, wire, s, e in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == _LABEL:
            name = value = ""
            for n, w, ls, le in _fields(buf, s, e):
                if w == 2 and n == 1:
                    name = buf[ls:le].decode()
                elif w == 2 and n == 2:
                    value = buf[ls:le].decode()
            sample.labels[name] = value
        elif number == _COUNTER:
            sample.counter = _double_field(buf, s, e)
        elif number == _GAUGE:
            sample.gauge = _double_field(buf, s, e)
        elif number == _HISTOGRAM:
            _histogram(buf, s, e, sample)
    return sample


def _double_field(buf: bytes, start: int, end: int) -> float:
    """Field 1 (a double) of a Counter or Gauge; 0 when absent (proto3 default)."""
    for number, wire, s, _ in _fields(buf, start, end):
        if number == 1 and wire == 1:
            return float(_DOUBLE.unpack_from(buf, s)[0])
    return 0.0


def _histogram(buf: bytes, start: int, end: int, sample: Sample) -> None:
    for number, wire, s, e in _fields(buf, start, end):
        if number == _SAMPLE_COUNT and wire == 0:
            sample.sample_count = _varint(buf, s)[0]
        elif number == _BUCKET and wire == 2:
            bound, count = 0.0, 0
            for n, w, bs, _ in _fields(buf, s, e):
                if n == _CUMULATIVE and w == 0:
                    count = _varint(buf, bs)[0]
                elif n == _UPPER_BOUND and w == 1:
                    bound = float(_DOUBLE.unpack_from(buf, bs)[0])
            sample.buckets.append((bound, count))
