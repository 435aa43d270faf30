"""The demo's sample upstream: one version of `payments`, with its own account.

    app = DemoUpstream("v2", header="x-api-key", keys={"k1"})
    await app.start()           # 127.0.0.1:app.port
    app.keys = {"k1", "k2"}     # the provider accepts both during a rotation
    DemoUpstream("v3", error_ratio=0.3)   # 3 of every 10 requests answer 500

Every answer but /healthz checks the credential the proxy injects: a missing or unknown
value answers 401, so a credential rotation that reached the proxies late would show up
as auth failures. Headers and body leave in one send (no Nagle + delayed-ACK stall).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter

_REASONS = {200: "OK", 401: "Unauthorized", 500: "Internal Server Error"}


class DemoUpstream:
    """An HTTP/1.1 keep-alive server on 127.0.0.1 that says which version it is.

    Args:
        version: what it answers in `x-upstream-version` and its JSON body.
        header: the credential header to check (lower case); None checks nothing.
        keys: the values it accepts in `header`.
        error_ratio: the share of requests answered 500, evenly spread.
    """

    def __init__(self, version: str, *, header: str | None = None,
                 keys: set[str] | None = None, error_ratio: float = 0.0) -> None:
        self.version = version
        self.header = header
        self.keys = set(keys or ())
        self.error_ratio = error_ratio
        self.port = 0
        self.requests = 0
        self.seen_keys: Counter[str] = Counter()
        """How many requests came with each accepted value (values, never printed)."""
        self.last_seen: dict[str, float] = {}
        """When each accepted value was last presented (monotonic seconds)."""
        self.rejected = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> DemoUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        lines = head.split("\r\n")
        path = lines[0].split(" ", 2)[1]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        status = self._status(path, headers)
        body = json.dumps({"version": self.version, "path": path}).encode()
        keep = headers.get("connection", "").lower() != "close"
        writer.write((
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"x-upstream-version: {self.version}\r\n"
            f"connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        ).encode() + body)  # one send: headers and body together
        await writer.drain()
        return keep

    def _status(self, path: str, headers: dict[str, str]) -> int:
        if path.startswith("/healthz"):
            return 200  # Envoy's health checks carry no credential
        if self.header is not None:
            presented = headers.get(self.header)
            if presented is None or presented not in self.keys:
                self.rejected += 1
                return 401
            self.seen_keys[presented] += 1
            self.last_seen[presented] = time.monotonic()
        self.requests += 1
        # Evenly spread: request n fails when floor(n·ratio) steps up.
        n = self.requests
        if int(n * self.error_ratio) > int((n - 1) * self.error_ratio):
            return 500
        return 200
