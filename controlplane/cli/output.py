"""How the CLI prints: kubectl-like aligned tables, YAML and JSON documents, errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, three spaces apart, like kubectl."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(headers), *rows]
    ]
    return "\n".join(lines)


def documents(docs: Sequence[dict[str, Any]], fmt: str, *, single: bool) -> str:
    """`-o yaml`: one document per resource; `-o json`: the object, or a List of them."""
    if fmt == "json":
        if single:
            return json.dumps(docs[0], indent=2)
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)}, indent=2)
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False).rstrip()


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
