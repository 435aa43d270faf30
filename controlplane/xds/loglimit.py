"""Log lines about what clients send, bounded: clipped, and at most one per interval.

A client chooses the names, NACK messages and type URLs it sends, and how often: logged
as they come, one stream wrote hundreds of MB of log in seconds. Each stream keeps a
`LogLimiter` per kind of line (made with its first line); a line held back is counted,
and the next one says how many were.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_LOGGED_CHARS = 128
"""Characters of a client-chosen string (a name, a message) put in a log line."""
LOG_INTERVAL_S = 10.0
"""At most one line of a kind per stream per this long."""


def clip(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """`text`, cut to `limit` characters with a note of how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


class LogLimiter:
    """At most one line per `interval_s` (not thread-safe: one stream's task owns it)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next = float("-inf")
        self.suppressed = 0
        """Lines held back since the last one let through."""

    def allow(self) -> str | None:
        """None: hold this line back (it is counted). Else let it through: returns the
        note to append (" (N similar lines suppressed)", or "")."""
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return None
        self._next = now + self.interval_s
        held, self.suppressed = self.suppressed, 0
        return f" ({held} similar lines suppressed)" if held else ""
