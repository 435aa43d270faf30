"""The demo's traffic generator: paced HTTP/1.1 keep-alive clients through the proxies.

Each answer is recorded with the proxy it went through, the version that answered
(`x-upstream-version`; "envoy" for Envoy's own replies), its status (0: no answer) and
its latency. `Traffic.window()` summarises the last seconds per version for the live view;
`Traffic.mark(label)` starts a new stage so the summary can report each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

REQUEST_TIMEOUT_S = 3.0
WINDOW_S = 3.0


@dataclass(frozen=True)
class Answer:
    at: float
    proxy: str
    version: str
    status: int
    latency_ms: float


@dataclass
class Tally:
    """Answers of one version (or of all): counts, failures, latencies."""

    requests: int = 0
    ok: int = 0
    auth_failures: int = 0
    server_errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, answer: Answer) -> None:
        self.requests += 1
        self.ok += 200 <= answer.status < 300
        self.auth_failures += answer.status in (401, 403)
        self.server_errors += answer.status >= 500 or answer.status == 0
        self.latencies.append(answer.latency_ms)

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.requests if self.requests else None

    @property
    def p99_ms(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@dataclass
class Stage:
    """What the clients saw during one stage of the demo."""

    label: str
    started: float
    ended: float | None = None
    total: Tally = field(default_factory=Tally)
    by_version: dict[str, Tally] = field(default_factory=dict)

    def add(self, answer: Answer) -> None:
        self.total.add(answer)
        self.by_version.setdefault(answer.version, Tally()).add(answer)


class Traffic:
    """`clients` paced clients per proxy port, `rate` requests per second in all."""

    def __init__(self, proxies: dict[str, int], *, clients: int = 2, rate: float = 200.0
                 ) -> None:
        self.proxies = proxies
        self.clients = clients
        self.interval_s = len(proxies) * clients / rate
        self.recent: deque[Answer] = deque()
        self.stages: list[Stage] = [Stage("start-up", time.monotonic())]
        self.total = Tally()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        for proxy, port in self.proxies.items():
            for i in range(self.clients):
                self._tasks.append(asyncio.create_task(self._client(proxy, port),
                                                       name=f"traffic-{proxy}-{i}"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.stages[-1].ended = time.monotonic()

    def mark(self, label: str) -> Stage:
        """End the current stage and start one named `label`."""
        now = time.monotonic()
        self.stages[-1].ended = now
        self.stages.append(Stage(label, now))
        return self.stages[-1]

    def window(self) -> tuple[Tally, dict[str, Tally]]:
        """The last WINDOW_S seconds: all answers, and per version."""
        cutoff = time.monotonic() - WINDOW_S
        while self.recent and self.recent[0].at < cutoff:
            self.recent.popleft()
        total, by_version = Tally(), dict[str, Tally]()
        for answer in self.recent:
            total.add(answer)
            by_version.setdefault(answer.version, Tally()).add(answer)
        return total, by_version

    def _record(self, answer: Answer) -> None:
        self.recent.append(answer)
        self.total.add(answer)
        self.stages[-1].add(answer)

    async def _client(self, proxy: str, port: int) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        next_at = time.monotonic()
        try:
            while not self._stopping:
                started = time.monotonic()
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        if conn is None:
                            conn = await asyncio.open_connection("127.0.0.1", port)
                        status, version, keep = await _exchange(*conn)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                    status, version, keep = 0, "none", False
                self._record(Answer(time.monotonic(), proxy, version, status,
                                    (time.monotonic() - started) * 1000))
                if not keep and conn is not None:
                    _close(conn[1])
                    conn = None
                next_at = max(next_at + self.interval_s, time.monotonic() - self.interval_s)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            if conn is not None:
                _close(conn[1])


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                    ) -> tuple[int, str, bool]:
    writer.write(b"GET /pay HTTP/1.1\r\nhost: payments\r\n\r\n")
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    keep = headers.get("connection", "").lower() != "close"
    return status, headers.get("x-upstream-version", "envoy"), keep


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
