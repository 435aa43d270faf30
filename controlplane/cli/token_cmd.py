"""`controlplane token create --role viewer|operator|admin [--name NAME]`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controlplane.api import admin_pb2
from controlplane.cli.client import Connection

_EPILOG = """The token is printed once, on the last line of stdout; only its hash is stored.
While no token exists, loopback callers act as admin; once one exists, every call needs
a token. Create an admin token first, or no one can create more.

examples:
  export CONTROLPLANE_TOKEN=$(controlplane token create --role admin --name ops)
  controlplane token create --role viewer --name grafana
"""


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    """Register `token create` on `sub`; `client` carries --server/--token/--tls-dir."""
    p = sub.add_parser("token", help="bearer tokens for the admin API")
    verbs = p.add_subparsers(dest="token_command", required=True, parser_class=type(p))
    c = verbs.add_parser(
        "create", parents=[client], help="create a bearer token with a role (admin only)",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    c.add_argument("--name", default="", help="names the token in the audit log "
                                              "(default ROLE-xxxxxx)")
    c.set_defaults(handler=create)


def create(args: argparse.Namespace) -> int:
    conn = Connection.from_args(args.server, args.token, args.client_tls_dir)
    response = conn.stub().CreateToken(
        admin_pb2.CreateTokenRequest(role=args.role, name=args.name),
        metadata=conn.metadata(), timeout=conn.timeout,
    )
    print(f'token "{response.name}" created with role {response.role}; it is shown only '
          "now: pass it with --token or CONTROLPLANE_TOKEN", file=sys.stderr, flush=True)
    print(response.token)
    return 0
