"""Secrets a proxy asked for that its group does not get: refused, and logged.

A snapshot holds only its group's secrets, so a request naming another group's
(`cert-<other>`, say) finds nothing and nothing is sent; this records the attempt
(node id, group, secret names) at warning level, once per name per stream. A group's
own secret that is not issued yet is logged the same way: the log line says which.

The names are the client's: what is remembered and logged of them is bounded (at most
`MAX_REMEMBERED` names per stream, a few names per line, each clipped, and one line per
`LOG_INTERVAL_S`), so a client naming fresh secrets every round costs neither memory
nor log space without end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from controlplane.xds.loglimit import LogLimiter, clip
from controlplane.xds.resources import SECRET

log = logging.getLogger(__name__)

MAX_REMEMBERED = 1_000
"""Denied names a stream remembers (not logged again); past it, new ones are only
counted by the rate limit."""
NAMES_PER_LINE = 5


class SecretDenials:
    """One stream's refused secret names (not thread-safe: the stream's task owns it)."""

    def __init__(self) -> None:
        self._logged: set[str] = set()
        self._limiter = LogLimiter()

    def check(self, *, node_id: str, group: str, type_url: str, requested: Iterable[str],
              available: Iterable[str]) -> list[str]:
        """Log the requested secrets the group does not have; returns the newly denied."""
        if type_url != SECRET:
            return []
        denied = sorted(set(requested) - set(available) - self._logged)
        if not denied:
            return []
        room = MAX_REMEMBERED - len(self._logged)
        self._logged.update(denied[:max(room, 0)])
        note = self._limiter.allow()
        if note is not None:
            shown = ", ".join(repr(clip(n)) for n in denied[:NAMES_PER_LINE])
            more = f" and {len(denied) - NAMES_PER_LINE} more" if (
                len(denied) > NAMES_PER_LINE) else ""
            log.warning("denied secret %s%s to node %r of group %r: the group does not get "
                        "it (a proxy receives only its own group's secrets)%s",
                        shown, more, clip(node_id), clip(group), note)
        return denied
