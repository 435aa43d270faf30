"""How `controlplane serve --log-format json|text` writes its logs.

`json`: one JSON object per line, for log shippers:

    {"ts": "2025-06-01T12:00:00.123Z", "level": "info", "logger": "controlplane.rollout.engine",
     "msg": "rollout payments-v2: Progressing → Promoting (last step passed)",
     "rollout": "payments-v2", "from": "Progressing", "to": "Promoting", "reason": "..."}

`ts` is UTC (RFC 3339, milliseconds); every field passed with `extra=` is a key of
its own (values JSON cannot hold are written as their `str`); an exception's
traceback is in `exc`. `text` is the classic `time level logger: message` line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord carries: anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: ts, level, logger, msg, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, fmt: str = "text", *, stream: TextIO | None = None) -> None:
    """Send the root logger's records to `stream` (default stderr) in `fmt` at `level`."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
