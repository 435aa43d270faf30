"""`controlplane audit [--since DURATION] [-o json] [--verify]`: the hash-chained audit log."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from controlplane.api import admin_pb2
from controlplane.cli.client import Connection
from controlplane.cli.output import error, table
from controlplane.errors import FieldError, InvalidInputError
from controlplane.model import parse_duration

_EPILOG = """examples:
  controlplane audit --since 1h
  controlplane audit -o json
  controlplane audit --verify        # exit 0 when the chain is intact, 1 otherwise
"""


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    """Register `audit` on `sub`; `client` carries --server/--token/--tls-dir."""
    p = sub.add_parser(
        "audit", parents=[client], help="show the audit log or verify its hash chain",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--since", metavar="DURATION",
                   help="only entries newer than this, e.g. 30s, 10m, 1h")
    p.add_argument("-o", "--output", choices=["json"])
    p.add_argument("--verify", action="store_true",
                   help="check the whole chain (ignores --since); exit 1 if it is broken")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    since = _since(args.since)
    conn = Connection.from_args(args.server, args.token, args.client_tls_dir)
    if args.verify:
        return verify(conn, fmt=args.output)
    return show(conn, since=since, fmt=args.output)


def show(conn: Connection, *, since: float | None, fmt: str | None) -> int:
    response = conn.stub().ListAudit(
        admin_pb2.ListAuditRequest(since=since or 0.0),
        metadata=conn.metadata(), timeout=conn.timeout,
    )
    entries: list[dict[str, Any]] = [json.loads(e) for e in response.entries]
    if fmt == "json":
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("No audit entries.", file=sys.stderr)
        return 0
    rows = [
        [str(e["seq"]), iso_utc(float(e["time"])), str(e["actor"]), str(e["action"]),
         f"{str(e['kind']).lower()}/{e['name']}", str(e.get("reason") or "")]
        for e in entries
    ]
    print(table(["SEQ", "TIME", "ACTOR", "ACTION", "KIND/NAME", "REASON"], rows))
    return 0


def verify(conn: Connection, *, fmt: str | None) -> int:
    response = conn.stub().VerifyAudit(
        admin_pb2.VerifyAuditRequest(), metadata=conn.metadata(), timeout=conn.timeout
    )
    problems = list(response.problems)
    if fmt == "json":
        print(json.dumps({"intact": not problems, "entries": response.entries,
                          "problems": problems}, indent=2))
    elif problems:
        for problem in problems:
            print(problem)
        error(f"audit log broken: {len(problems)} problem(s) in {response.entries} entries")
    else:
        print(f"audit log intact: {response.entries} entries")
    return 1 if problems else 0


def iso_utc(seconds: float) -> str:
    """ISO 8601 in UTC, to the second: 2026-01-31T12:00:00Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since(text: str | None) -> float | None:
    """`--since 1h` → seconds since the epoch an hour ago (exit 2 on a bad duration)."""
    if text is None:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError as exc:
        raise InvalidInputError([FieldError("--since", str(exc))]) from exc
