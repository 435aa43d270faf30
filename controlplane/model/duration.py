"""Durations as users write them (`500ms`, `5s`, `1m30s`, `1h`), kept as text so they
round-trip, with their seconds parsed once when the model is validated."""

from __future__ import annotations

import re
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

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


class Duration(str):
    """A duration as the user wrote it (`1m30s`), its `seconds` parsed once, when validated.

    It is the text everywhere a string goes (stored bytes, `get -o yaml`, messages,
    equality and hashing with the plain text), so nothing stored changes; code that
    needs the length reads `seconds` instead of parsing the text again.

    Errors:
        ValueError: (when built) the text is not a duration.
    """

    _seconds: float

    def __new__(cls, text: str) -> Duration:
        seconds = parse_duration(text)
        self = super().__new__(cls, text)
        self._seconds = seconds
        return self

    @property
    def seconds(self) -> float:
        """The length in seconds (`1m30s` → 90.0)."""
        return self._seconds

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        # Validated from a str; dumped as a plain str (yaml.safe_dump takes no subclass).
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(
                str, return_schema=core_schema.str_schema()))
