"""Requests through a real Envoy's listener, each answered by which upstream instance,
with every failure kept: how e2e tests show where traffic goes and that none is lost."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.http import get_sync


class Served:
    """`served()` → the instance that answered one request ("" and a failure recorded
    when it failed); `only(...)` → a condition that 10 requests in a row reach those."""

    def __init__(self, listener: int) -> None:
        self._listener = listener
        self.failures: list[str] = []

    def __call__(self) -> str:
        try:
            response = get_sync(self._listener, "/anything", timeout=2.0)
        except OSError as exc:
            self.failures.append(repr(exc))
            return ""
        if response.status != 200:
            self.failures.append(str(response.status))
            return ""
        version: str = response.json()["version"]
        return version

    def only(self, *instances: str) -> Callable[[], bool]:
        return lambda: all(self() in instances for _ in range(10))
