"""A tiny HTTP/1.1 client for tests: async (raw asyncio) and sync (http.client), with timeouts.

The async one never blocks the event loop, so a test may call through Envoy to
an upstream served by the same loop.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


async def get(
    port: int,
    path: str = "/anything",
    *,
    host: str = "127.0.0.1",
    headers: Mapping[str, str] | None = None,
    timeout: float = 2.0,
    method: str = "GET",
) -> Response:
    """One request on a fresh connection (`Connection: close`); TimeoutError after `timeout`."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}", "connection: close"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    return _parse(raw)


def _parse(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise ConnectionError(f"not an HTTP response: {raw[:80]!r}")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return Response(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


def get_sync(
    port: int,
    path: str = "/anything",
    *,
    host: str = "127.0.0.1",
    headers: Mapping[str, str] | None = None,
    timeout: float = 2.0,
    method: str = "GET",
) -> Response:
    """The same request for code without an event loop."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()
