"""`controlplane token create --role viewer|operator|admin [--name NAME]`, `token list`,
`token revoke NAME`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from controlplane.api import admin_pb2
from controlplane.cli.audit_cmd import iso_utc
from controlplane.cli.client import Connection
from controlplane.cli.output import table

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
    ls = verbs.add_parser("list", parents=[client],
                          help="every token's name, role and creation time (admin only)",
                          epilog="Only names and roles: a token itself is shown once, when "
                                 "created.\n\nexamples:\n  controlplane token list\n"
                                 "  controlplane token list -o json",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("-o", "--output", choices=["json", "yaml"])
    ls.set_defaults(handler=list_tokens)
    r = verbs.add_parser(
        "revoke", parents=[client], help="delete a token by name (admin only)",
        epilog="Calls with the token fail at once on the server that revoked it, within 5 s\n"
               "on the others. The last admin token cannot be revoked: create another first."
               "\n\nexample:\n  controlplane token revoke grafana",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("name", help="the token's name (see `controlplane token list`)")
    r.set_defaults(handler=revoke)


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


def list_tokens(args: argparse.Namespace) -> int:
    conn = Connection.from_args(args.server, args.token, args.client_tls_dir)
    response = conn.stub().ListTokens(admin_pb2.ListTokensRequest(),
                                      metadata=conn.metadata(), timeout=conn.timeout)
    tokens = [{"name": t.name, "role": t.role, "created": iso_utc(t.created)}
              for t in response.tokens]
    if args.output == "json":
        print(json.dumps(tokens, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(tokens, sort_keys=False).rstrip())
    elif not tokens:
        print("No tokens: loopback callers act as admin until one is created.",
              file=sys.stderr)
    else:
        print(table(["NAME", "ROLE", "CREATED"],
                    [[t["name"], t["role"], t["created"]] for t in tokens]))
    return 0


def revoke(args: argparse.Namespace) -> int:
    conn = Connection.from_args(args.server, args.token, args.client_tls_dir)
    response = conn.stub().RevokeToken(admin_pb2.RevokeTokenRequest(name=args.name),
                                       metadata=conn.metadata(), timeout=conn.timeout)
    print(f"token {response.name} ({response.role}) revoked")
    return 0
