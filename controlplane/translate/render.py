"""Resources as YAML people read: golden files, `apply --dry-run` diffs, debugging.

Proto field names (as in Envoy's docs and config dumps), typed configs expanded
with their `@type`, keys sorted: the same resources always render the same text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from controlplane.translate.resources import ResourceSet

KINDS: tuple[str, ...] = ("listeners", "routes", "clusters", "endpoints", "secrets")
"""ResourceSet fields, in the order people read them: entry point first."""


def to_plain(message: Message) -> dict[str, Any]:
    """A message as plain dicts and lists (what yaml.safe_dump and json accept).

    MessageToDict returns OrderedDicts for `Any` fields, which safe_dump refuses;
    a JSON round trip makes them plain.
    """
    data: dict[str, Any] = json.loads(
        json.dumps(MessageToDict(message, preserving_proto_field_name=True))
    )
    return data


REDACTED = "[redacted]"
_SECRET_FIELDS = frozenset({"inline_bytes", "inline_string", "environment_variable", "filename"})


def redacted(data: Any) -> Any:
    """`data` with every DataSource value replaced by `[redacted]` (for Secrets)."""
    if isinstance(data, dict):
        return {k: REDACTED if k in _SECRET_FIELDS else redacted(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redacted(v) for v in data]
    return data


def render_messages(messages: Iterable[Message], *, redact: bool = False) -> str:
    """A YAML list of the messages, keys sorted; `redact` hides DataSource values."""
    plain = [to_plain(m) for m in messages]
    return yaml.safe_dump([redacted(p) for p in plain] if redact else plain, sort_keys=True)


def render(resources: ResourceSet, *, skip_empty: Iterable[str] = ("secrets",)) -> dict[str, str]:
    """{kind: YAML} for each of `KINDS`; kinds in `skip_empty` are left out when empty."""
    skip = set(skip_empty)
    out: dict[str, str] = {}
    for kind in KINDS:
        messages: tuple[Message, ...] = getattr(resources, kind)
        if messages or kind not in skip:
            # Secrets never print: golden files, dry-run diffs and logs show the shape only.
            out[kind] = render_messages(messages, redact=kind == "secrets")
    return out
