"""An HTTP/1.1 echo upstream for tests: says which version it is, counts requests.

    up = Upstream("v1")
    await up.start()                  # in the test's event loop, or
    up.start_in_thread()              # its own loop in a thread (for sync tests)
    ... GET /anything -> 200 {"version": "v1", "method": ..., "path": ..., "headers": {...}}
    up.status = 503                   # later requests to /anything answer 503
    Upstream("v2", error_ratio=0.3)   # 3 of every 10 requests answer `error_status` (500)
    Upstream("v2", latency_s=0.2)     # every answer waits 200 ms
    Upstream("v1", host="127.0.0.2")  # on another loopback address (names in DNS tests)
    Upstream("v1", tls=server_context) # HTTPS; with CERT_REQUIRED, `peer_sans` holds the
                                      # last client certificate's SANs ("URI:spiffe://...")
    await up.stop() / up.stop_thread()

`/healthz` answers 200 (503 after `up.healthy = False`). Headers and body leave in one
send: a second small write would meet Nagle + delayed ACK (~40 ms per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections import Counter

from tests.support.ports import free_port

_REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error", 503: "Service Unavailable"}


class Upstream:
    """An echo server on `host`:`port` (127.0.0.1 and a free port unless given)."""

    def __init__(self, version: str, *, status: int = 200, port: int | None = None,
                 error_ratio: float = 0.0, error_status: int = 500,
                 latency_s: float = 0.0, tls: ssl.SSLContext | None = None,
                 host: str = "127.0.0.1") -> None:
        self.version = version
        self.status = status
        self.error_ratio = error_ratio
        self.error_status = error_status
        self.latency_s = latency_s
        self.healthy = True
        self.host = host
        self.port = port or free_port(host)
        self.requests = 0
        self.paths: Counter[str] = Counter()
        self.last_headers: dict[str, str] = {}
        self.tls = tls
        self.peer_sans: list[str] = []
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  ssl=self.tls)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def start_in_thread(self, timeout: float = 5.0) -> Upstream:
        """Serve from a daemon thread with its own event loop; returns once listening."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"upstream-{self.version}", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError(f"upstream {self.version} did not start")
        if failure:
            raise failure[0]
        return self

    def stop_thread(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._thread = self._loop = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peercert")
        if peer:
            self.peer_sans = [f"{kind}:{value}" for kind, value in
                              peer.get("subjectAltName", ())]
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, ssl.SSLError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        await _read_body(reader, headers)
        self.requests += 1
        self.paths[path.split("?", 1)[0]] += 1
        self.last_headers = headers
        if path.startswith("/healthz"):
            status, body = (200, b"ok\n") if self.healthy else (503, b"unhealthy\n")
        else:
            status = self.status
            # Evenly spread: request n fails when floor(n·ratio) steps up.
            n = self.paths.total()
            if int(n * self.error_ratio) > int((n - 1) * self.error_ratio):
                status = self.error_status
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            body = json.dumps({"version": self.version, "method": method, "path": path,
                               "headers": headers}).encode()
        keep = headers.get("connection", "").lower() != "close"
        response = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"x-upstream-version: {self.version}\r\n"
            f"connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        ).encode() + body
        writer.write(response)  # one send: headers and body together
        await writer.drain()
        return keep


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return body
            body += chunk[:-2]
    return b""
