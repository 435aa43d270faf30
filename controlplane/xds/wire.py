"""Discovery responses written as bytes, assembled from parts serialized once.

A protobuf message is the concatenation of its fields, so a response is its
shared body (version, resources, type URL: the same for every stream of a
group at one version) followed by the stream's own nonce. Every stream then
writes the same bytes but for a few at the end, and nothing is serialized per
stream (the gRPC methods are registered with a pass-through serializer).
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message

# DiscoveryResponse: version_info=1 resources=2 type_url=4 nonce=5
# DeltaDiscoveryResponse: system_version_info=1 resources=2 type_url=4 nonce=5
#                         removed_resources=6
VERSION, RESOURCES, TYPE_URL, NONCE, REMOVED = 1, 2, 4, 5, 6


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, data: bytes) -> bytes:
    """One length-delimited field (string, bytes or message) of a protobuf message."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def text(number: int, value: str) -> bytes:
    """A string field; nothing for "" (proto3 leaves default values out)."""
    return field(number, value.encode()) if value else b""


def sotw_body(version: str, type_url: str, resources: Iterable[bytes]) -> bytes:
    """A DiscoveryResponse without its nonce; `resources` are framed `RESOURCES` fields."""
    return b"".join((text(VERSION, version), *resources, text(TYPE_URL, type_url)))


def delta_parts(version: str, type_url: str, resources: Iterable[bytes], nonce: str,
                removed: Iterable[str]) -> list[bytes]:
    """A DeltaDiscoveryResponse as the parts to join; `resources` are framed fields."""
    return [text(VERSION, version), *resources, text(TYPE_URL, type_url),
            text(NONCE, nonce), *(text(REMOVED, n) for n in removed)]


def delta_response(version: str, type_url: str, resources: Iterable[bytes], nonce: str,
                   removed: Iterable[str]) -> bytes:
    """A whole DeltaDiscoveryResponse; `resources` are framed `RESOURCES` fields."""
    return b"".join(delta_parts(version, type_url, resources, nonce, removed))


def sotw_parts(body: bytes, nonce: str) -> list[bytes]:
    """`body` (a response without nonce) and its nonce, as the parts to join."""
    return [body, text(NONCE, nonce)]


def with_nonce(body: bytes, nonce: str) -> bytes:
    """`body` (a response without nonce) with its nonce appended."""
    return b"".join(sotw_parts(body, nonce))


def serialize(message: bytes | Message) -> bytes:
    """The gRPC response serializer: bytes pass through, messages are serialized."""
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data
