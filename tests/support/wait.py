"""Waiting on a condition with a deadline: the only way tests wait."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = 5.0,
    *,
    interval: float = 0.02,
    message: str = "",
) -> T:
    """Poll `condition` (sync or async) until it returns a truthy value; return that value.

    Exceptions raised by the condition count as "not yet"; the last one is
    chained to the TimeoutError raised when `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value: object = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last_value = value
        except (AssertionError, OSError, ValueError, KeyError, LookupError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = message or getattr(condition, "__name__", "condition")
            raise TimeoutError(
                f"{detail} not true within {timeout}s (last value {last_value!r}, "
                f"last error {last_error!r})"
            ) from last_error
        await asyncio.sleep(interval)


def wait_for_sync(
    condition: Callable[[], T], timeout: float = 5.0, *, interval: float = 0.02, message: str = ""
) -> T:
    """`wait_for` for code without an event loop."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (AssertionError, OSError, ValueError, KeyError, LookupError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = message or getattr(condition, "__name__", "condition")
            raise TimeoutError(f"{detail} not true within {timeout}s") from last_error
        time.sleep(interval)
