"""`controlplane audit [--since DURATION] [-o json] [--verify]`: the keyed, anchored audit log.

Added: `--export FILE` (the log, its head and the replica's anchor, for an offline
check) and `--verify --file FILE --key-file KEY` (that check, with no server).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
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
  controlplane audit --export audit.json
  controlplane audit --verify --file audit.json --key-file /var/lib/cp/secrets.key
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
    p.add_argument("--export", metavar="FILE",
                   help="write the log, its head and the server's anchor to FILE (JSON)")
    p.add_argument("--file", metavar="FILE",
                   help="with --verify: check an --export FILE offline (no server)")
    p.add_argument("--key-file", metavar="KEY",
                   help="with --file: the sealing key file (secrets.key) the audit key "
                        "derives from (default: $CONTROLPLANE_SECRETS_KEY)")
    p.add_argument("--anchor", metavar="FILE",
                   help="with --file: a replica's DATA_DIR/audit.anchor to compare against")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    since = _since(args.since)
    _check_combination(args)
    if args.file:
        return verify_file(Path(args.file), key_file=args.key_file, anchor_file=args.anchor,
                           fmt=args.output)
    conn = Connection.from_args(args.server, args.token, args.client_tls_dir)
    if args.export:
        return export(conn, Path(args.export))
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
    return _report(list(response.problems), response.entries, fmt=fmt)


def export(conn: Connection, path: Path) -> int:
    response = conn.stub().ExportAudit(
        admin_pb2.ExportAuditRequest(), metadata=conn.metadata(), timeout=conn.timeout
    )
    count = len(json.loads(response.document).get("entries", []))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(response.document)
    except OSError as exc:
        raise InvalidInputError([FieldError("--export", f"cannot write {path}: {exc}")]
                                ) from exc
    print(f"exported {count} audit entries to {path}")
    return 0


def verify_file(path: Path, *, key_file: str | None, anchor_file: str | None,
                fmt: str | None) -> int:
    """`--verify --file`: an export checked offline with the key the server chains with."""
    # Imported here: cryptography (the key derivation) costs every other command ~90 ms.
    from controlplane.store.audit import AuditHead, verify_export
    from controlplane.store.audit_anchor import AUDIT_KEY_PURPOSE

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError([FieldError("--file", f"cannot read {path}: {exc}")]
                                ) from exc
    key = _audit_key(key_file, AUDIT_KEY_PURPOSE)
    anchor = None
    if anchor_file is not None:
        try:
            anchor = AuditHead.from_json(Path(anchor_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidInputError([FieldError(
                "--anchor", f"{anchor_file} is not an audit anchor: {exc}")]) from exc
    try:
        problems = verify_export(doc, key=key, anchor=anchor, anchored_in=anchor_file or "")
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInputError([FieldError(
            "--file", f"{path} is not an `audit --export` file: {exc}")]) from exc
    return _report(problems, len(doc["entries"]), fmt=fmt)


def _audit_key(key_file: str | None, purpose: bytes) -> bytes | None:
    """The audit key, derived from the sealing key in `key_file`, or else in the
    environment (as serve reads it); None when neither is given."""
    from controlplane.secrets.crypto import ENV_VAR, SealingKey

    if key_file is None:
        env = os.environ.get(ENV_VAR)
        return SealingKey(env.encode()).derive(purpose) if env else None
    try:
        return SealingKey(Path(key_file).read_bytes().strip()).derive(purpose)
    except (OSError, InvalidInputError) as exc:
        raise InvalidInputError([FieldError(
            "--key-file", f"{key_file} is not a sealing key file (secrets.key): {exc}")]
        ) from exc


def _report(problems: list[str], entries: int, *, fmt: str | None) -> int:
    if fmt == "json":
        print(json.dumps({"intact": not problems, "entries": entries,
                          "problems": problems}, indent=2))
    elif problems:
        for problem in problems:
            print(problem)
        error(f"audit log broken: {len(problems)} problem(s) in {entries} entries")
    else:
        print(f"audit log intact: {entries} entries")
    return 1 if problems else 0


def _check_combination(args: argparse.Namespace) -> None:
    """Flags that only make sense together: exit 2 before anything is read."""
    errors = []
    if args.file and not args.verify:
        errors.append(FieldError("--file", "only with --verify (an offline check)"))
    for flag, value in (("--key-file", args.key_file), ("--anchor", args.anchor)):
        if value and not args.file:
            errors.append(FieldError(flag, "only with --verify --file FILE"))
    if args.export and (args.verify or args.since):
        errors.append(FieldError("--export", "writes the whole log: not with --verify or "
                                             "--since"))
    if errors:
        raise InvalidInputError(errors)


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
