"""Small proto builders every resource module uses: durations, addresses, ADS, Any."""

from __future__ import annotations

import functools

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.config_source_pb2 import (
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
)
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from controlplane.errors import TranslationError
from controlplane.model import parse_duration


def duration(text: str) -> Duration:
    """A model duration (`500ms`, `1m30s`) as a protobuf Duration, exact to the millisecond.

    Errors:
        TranslationError: the text is not a duration (the model should have caught it).
    """
    seconds, nanos = _duration_parts(text)
    return Duration(seconds=seconds, nanos=nanos)


@functools.lru_cache(maxsize=1024)
def _duration_parts(text: str) -> tuple[int, int]:
    # A config repeats a handful of durations thousands of times (every cluster's
    # timeouts): parse each text once. Immutable ints, so sharing is safe.
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise TranslationError(str(exc)) from exc
    millis = round(seconds * 1000)
    return millis // 1000, (millis % 1000) * 1_000_000


def ads() -> ConfigSource:
    """`{ads: {}, resource_api_version: V3}`: fetch the resource over the ADS stream."""
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def pack(message: Message) -> AnyProto:
    """`message` in a google.protobuf.Any, serialized deterministically."""
    packed = AnyProto()
    packed.Pack(message, deterministic=True)
    return packed


def socket_address(host: str, port: int) -> Address:
    """A TCP socket address; `host` is an IPv4 or IPv6 address (no brackets)."""
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def split_endpoint(text: str) -> tuple[str, int]:
    """`"10.0.0.1:80"` → ("10.0.0.1", 80); `"[::1]:80"` → ("::1", 80).

    Errors:
        TranslationError: not IP:PORT (the model validates it; a state that bypassed
            validation may not be).
    """
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TranslationError(f"endpoint {text!r} is not IP:PORT")
    return host, int(port)
