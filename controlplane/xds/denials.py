"""Secrets a proxy asked for that its group does not get: refused, and logged once.

A snapshot holds only its group's secrets, so a request naming another group's
(`cert-<other>`, say) finds nothing and nothing is sent; this records the attempt
(node id, group, secret name) at warning level, once per name per stream. A group's
own secret that is not issued yet is logged the same way: the log line says which.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from controlplane.xds.resources import SECRET

log = logging.getLogger(__name__)


class SecretDenials:
    """One stream's refused secret names (not thread-safe: the stream's task owns it)."""

    def __init__(self) -> None:
        self._logged: set[str] = set()

    def check(self, *, node_id: str, group: str, type_url: str, requested: Iterable[str],
              available: Iterable[str]) -> list[str]:
        """Log the requested secrets the group does not have; returns the newly denied."""
        if type_url != SECRET:
            return []
        denied = sorted(set(requested) - set(available) - self._logged)
        for name in denied:
            log.warning("denied secret %r to node %r of group %r: the group does not get it "
                        "(a proxy receives only its own group's secrets)", name, node_id, group)
        self._logged.update(denied)
        return denied
