"""A NACK's text, with each Envoy resource it names traced to the resource that made it.

Envoy names what it refused by the names our translator gave (names.py, sds.py):
`Error adding/updating cluster(s) payments|v2: Failed to load trusted CA certificates
from /etc/ca.pem` becomes `... cluster(s) payments|v2 (Upstream/payments version v2):
...`, so `get proxies` and `rollout status` say which resource to fix.
"""

from __future__ import annotations

import re

from controlplane.translate.names import CLUSTER_SEPARATOR

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_CLUSTER = re.compile(
    rf"(?<![\w|-])({_LABEL}){re.escape(CLUSTER_SEPARATOR)}({_LABEL})(?![\w|-])(?! \()")
# `listener(s) NAME` (LDS's summary) or a quoted name after `listener`.
_LISTENER = re.compile(rf"\b(listener\(s\) |listener ')({_LABEL})(?![\w|-])(?!'? \()'?")
_ROUTE_CONFIG = re.compile(rf"\b(route config(?:uration)? ')({_LABEL})'(?! \()", re.IGNORECASE)
_CREDENTIAL = re.compile(rf"(?<![\w-])credential-({_LABEL})(?![\w-])(?! \()")


def trace_nack(text: str) -> str:
    """`text` (a NACK's error_detail) with `(Kind/name ...)` after every name in it that
    our translator generates. Pure; a text naming none of ours comes back unchanged."""
    text = _CLUSTER.sub(
        lambda m: f"{m.group(0)} (Upstream/{m.group(1)} version {m.group(2)})", text)
    text = _LISTENER.sub(lambda m: f"{m.group(0)} (Listener/{m.group(2)})", text)
    # A listener's RouteConfiguration carries its name (names.route_config_name).
    text = _ROUTE_CONFIG.sub(
        lambda m: f"{m.group(0)} (the routes of Listener/{m.group(2)})", text)
    return _CREDENTIAL.sub(lambda m: f"{m.group(0)} (Credential/{m.group(1)})", text)
