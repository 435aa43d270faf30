"""Durations as users write them (`500ms`, `5s`, `1m30s`, `1h`), kept as text so they round-trip."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return the duration in seconds.

    Errors:
        ValueError: the text is not one or more `<number><ms|s|m|h>` parts.
    """
    text = text.strip()
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration; write e.g. 500ms, 5s, 1m30s or 1h")
    return total


def _check(text: str) -> str:
    parse_duration(text)
    return text


Duration = Annotated[str, AfterValidator(_check)]
"""A duration string, validated; convert with `parse_duration`."""
